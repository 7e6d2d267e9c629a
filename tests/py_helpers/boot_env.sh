GREETING="from bootstrap"
