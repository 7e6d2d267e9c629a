# Not executable on purpose: the shell runner runs it with sh.
trap 'echo "stopping"; exit 0' TERM
echo "greeting=$GREETING combined=$COMBINED pid=$$"
sh -c 'echo "child sees greeting=$GREETING"'
while :; do
    sleep 0.1
done
