"""Expansions (gsuper/expand.py): a table of texts and what they become; errors for unknown names."""

import pytest

from gsuper.expand import ExpansionError, expand, names_used

VALUES = {"program_name": "queue", "process_num": 3, "here": "/etc/gsuper/conf.d", "numprocs": 8}
ENV = {"HOME": "/root", "APP": "shop", "N": "7"}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("php artisan queue:work", "php artisan queue:work"),
        ("%(program_name)s", "queue"),
        ("%(program_name)s_%(process_num)02d", "queue_03"),
        ("%(process_num)d", "3"),
        ("%(process_num)3d|", "  3|"),
        ("%(process_num)-3d|", "3  |"),
        ("%(process_num)x", "3"),
        ("%(here)s/app.php", "/etc/gsuper/conf.d/app.php"),
        ("%(ENV_HOME)s/.cache", "/root/.cache"),
        ("%(ENV_N)03d", "007"),
        ("%(numprocs)d workers", "8 workers"),
        ("100%%", "100%"),
        ("%%(program_name)s", "%(program_name)s"),
        ("relay -a %h:%p", "relay -a %h:%p"),
        ("date +%Y-%m-%d", "date +%Y-%m-%d"),
        ("50% off", "50% off"),
        ("trailing %", "trailing %"),
        ("%(program_name)", "%(program_name)"),  # no conversion: a lone %, left as it is
        ("%(program_name)s %h %%", "queue %h %"),
        ("w%(process_num)d-%(process_num)d", "w3-3"),
    ],
)
def test_expansions(text, expected):
    assert expand(text, VALUES, ENV) == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("%(group_nam)s", "%(group_nam)s: unknown expansion"),
        ("%(ENV_NOPE)s", "the environment variable NOPE is not set"),
        ("%(program_name)d", "'queue' is not a number"),
        ("%()s", "unknown expansion"),
    ],
)
def test_expansion_errors(text, message):
    with pytest.raises(ExpansionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expand(text, VALUES, ENV)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ExpansionError) as err:
        expand("%(proces_num)d", VALUES, ENV)
    assert "%(process_num)s" in str(err.value) and "%(ENV_NAME)s" in str(err.value)


def test_names_used():
    assert names_used("a %(process_num)02d %(here)s %% %h") == {"process_num", "here"}
    assert names_used("relay -a %h:%p 100%%") == set()
