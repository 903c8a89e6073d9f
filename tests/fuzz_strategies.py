"""Hypothesis strategies for the fuzz tests, built from the real config schema.

Not a test module. The strategies read the config dataclasses (and their ``metadata``: choices,
patterns, ranges), so a key added to config.py is fuzzed at once, and mix plausible values with
hostile ones (NaN, huge integers, NUL, newlines, 5000-character strings, YAML tags, deep
nesting). test_fuzz_config.py drives config dicts, ``--set`` overrides and config files with
them; test_fuzz_cli.py drives the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from shieldtune import config as config_module
from shieldtune.config import Config

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

HUGE_INT = 10**5000  # more digits than Python will turn into a string (sys.int_info)
#: Drawn lazily: hypothesis prints a strategy's constants when it reports, and repr(HUGE_INT)
#: itself raises ValueError.
HUGE_INTS = st.sampled_from([1, -1]).map(lambda sign: sign * HUGE_INT)


def assert_one_line(message: str) -> None:
    assert message, "an error must say something"
    assert len(message.splitlines()) == 1 and "\n" not in message and "\r" not in message, ascii(
        message[:500]
    )


def one_in(n: int, draw: st.DrawFn) -> bool:
    """True about once in ``n`` draws (a middle value: hypothesis favours 0 and the bounds)."""
    return draw(st.integers(0, n - 1)) == n // 2


# --------------------------------------------------------------------------- the schema

SECTIONS: dict[str, type] = typing.get_type_hints(Config)
FIELDS: dict[str, dict[str, dataclasses.Field]] = {
    name: {f.name: f for f in dataclasses.fields(cls)} for name, cls in SECTIONS.items()
}
SPEC_FIELDS = {f.name: f for f in dataclasses.fields(config_module.HyperparameterSpec)}
SPEC_HINTS = typing.get_type_hints(config_module.HyperparameterSpec)
HINTS = {name: typing.get_type_hints(cls) for name, cls in SECTIONS.items()}
ALL_KEYS = [f"{s}.{k}" for s, fields in FIELDS.items() for k in fields]
ALL_HINTS = {f"{s}.{k}": hint for s, hints in HINTS.items() for k, hint in hints.items()}

# --------------------------------------------------------------------------- values

NASTY_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "x" * 5000,
        "a\x00b",
        "line\nbreak",
        "carriage\rreturn",
        "sep\u2028arator",
        "tab\there",
        "é🙂",
        "1e999",
        "nan",
        "None",
        "-",
        "--set",
        "'quoted'",
        '"',
        "{",
        "fgsm_robust_acc >= 2",
        "val_acc <= nan",
        "mia_advantage <= 1e999",
    ]
)
NASTY_NUMBERS = st.sampled_from(
    [
        0,
        -1,
        2**31,
        2**63,
        -(2**63),
        10**400,
        math.nan,
        math.inf,
        -math.inf,
        -0.0,
        1e308,
        -1e308,
        5e-324,
        0.5,
        1.5,
    ]
)
HOSTILE_SCALARS = st.one_of(
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    NASTY_NUMBERS,
    HUGE_INTS,
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    NASTY_STRINGS,
)
HOSTILE_KEYS = st.one_of(
    st.text(max_size=8),
    st.sampled_from([*FIELDS, *SPEC_FIELDS, "a\nb", "", "x" * 5000, "\x00"]),
    st.integers(),
    st.sampled_from([None, True, 1.5]),
    HUGE_INTS,
)
HOSTILE = st.recursive(
    HOSTILE_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(HOSTILE_KEYS, inner, max_size=3),
    max_leaves=6,
)


def plausible(f: dataclasses.Field, annotation: Any) -> st.SearchStrategy[Any]:
    """Values a user could mean for this field, in range or just outside it."""
    meta = f.metadata
    options: list[st.SearchStrategy[Any]] = []
    if f.default is not dataclasses.MISSING:
        options.append(st.just(f.default))
    if "choices" in meta:
        options.append(st.sampled_from(meta["choices"]))
    if "pattern" in meta:
        options.append(st.just(meta["pattern"][1]))
    lo, hi = meta.get("range", (None, None))
    bounds = [b for b in (lo, hi) if b is not None]
    options.extend(st.just(b) for b in bounds)
    if annotation in (int, int | None):
        options.append(st.integers(min_value=lo, max_value=hi) if bounds else st.integers())
    elif annotation in (float, float | None):
        options.append(st.floats(lo, hi) if bounds else st.floats(-1e6, 1e6))
    elif annotation is bool:
        options.append(st.booleans())
    elif annotation in (str, str | None):
        options.append(st.text(max_size=16))
    return st.one_of(options) if options else st.nothing()


CONSTRAINTS = st.builds(
    "{} {} {}".format,
    st.sampled_from(["val_acc", "fgsm_robust_acc", "pgd_robust_acc", "mia_advantage", "acc"]),
    st.sampled_from([">=", "<=", ">", "=="]),
    st.sampled_from(["0.5", "0", "-1", "1.5", "1e999", "nan", "0.7.1"]),
)
SPEC = st.dictionaries(
    st.sampled_from(sorted(SPEC_FIELDS)),
    st.deferred(lambda: st.one_of(*SPEC_VALUES.values(), HOSTILE)),
    max_size=len(SPEC_FIELDS),
)
SPEC_VALUES = {name: plausible(f, SPEC_HINTS[name]) for name, f in SPEC_FIELDS.items()}


def value_for(section: str, key: str) -> st.SearchStrategy[Any]:
    if (section, key) == ("env", "search_space"):
        return st.one_of(st.lists(SPEC, max_size=3), HOSTILE)
    if (section, key) == ("safety", "constraints"):
        return st.one_of(st.lists(CONSTRAINTS | NASTY_STRINGS, max_size=3), HOSTILE)
    return st.one_of(plausible(FIELDS[section][key], HINTS[section][key]), HOSTILE)


@st.composite
def config_dicts(draw: st.DrawFn) -> Any:
    """A raw config: some real sections with some real keys, plus the odd unknown or non-dict."""
    if one_in(20, draw):
        return draw(HOSTILE)  # not a mapping at all
    data: dict[Any, Any] = {}
    for section in draw(st.lists(st.sampled_from(sorted(FIELDS)), unique=True, max_size=4)):
        if one_in(10, draw):
            data[section] = draw(HOSTILE)
            continue
        keys = draw(st.lists(st.sampled_from(sorted(FIELDS[section])), unique=True, max_size=4))
        data[section] = {key: draw(value_for(section, key)) for key in keys}
        if one_in(10, draw):
            data[section][draw(HOSTILE_KEYS)] = draw(HOSTILE)
    if one_in(10, draw):
        data[draw(HOSTILE_KEYS)] = draw(HOSTILE)
    return data


# --------------------------------------------------------------------------- overrides
#: Six levels of eight aliases: tiny as text, 8**6 leaves once printed (a 6 MB message).
ALIAS_BOMB = (
    "["
    + ", ".join(f"&l{i} [{', '.join([f'*l{i - 1}' if i else '1'] * 8)}]" for i in range(6))
    + "]"
)

YAML_VALUES = st.sampled_from(
    [
        "",
        "~",
        "null",
        ".nan",
        "-.inf",
        "1e999",
        "9" * 5000,
        "0x1F",
        "0o17",
        "1_000",
        "[1, 2",
        "{a: 1, b: [2, {c: 3}]}",
        "{learning_rate: 0.1}",
        "[{name: learning_rate, init: 0.05, low: 0.01, high: 0.4}]",
        "&a [*a]",
        "&a {x: *a}",
        ALIAS_BOMB,
        "*undefined",
        "!!python/object:os.system ls",
        "!!python/object/apply:os.system [ls]",
        "!!python/name:os.system",
        "!!binary '!!not base64'",
        "!!float abc",
        "!!int abc",
        "!!timestamp abc",
        "!!set {a, b}",
        "!!omap [a: 1]",
        "!!str",
        "!custom 1",
        "2020-13-45",
        "2020-02-30 25:61:61",
        "? [a]\n: 1",
        "a: b: c",
        "'unterminated",
        '"bad \\q escape"',
        "\t1",
        "\x07",
        "\x00",
        "\ud800",
        "\ufeff1",
        "%YAML 1.1\n--- 1",
        "--- 1\n--- 2",
        "[" * 3000 + "]" * 3000,
        "{a: " * 1000 + "1" + "}" * 1000,
        "- " * 500 + "1",
        "|\n  block\n  text",
        ">\n folded",
    ]
)
OVERRIDE_KEYS = st.one_of(
    st.sampled_from(ALL_KEYS),
    st.sampled_from(sorted(FIELDS)),
    st.text(max_size=12),
    st.sampled_from(["", ".", "a..b", " tuner . seed ", "tuner.seed.x", "a\nb.c", "x" * 5000]),
)
PLAUSIBLE_OVERRIDES = st.sampled_from(ALL_KEYS).flatmap(
    lambda key: plausible(FIELDS[key.split(".")[0]][key.split(".")[1]], ALL_HINTS[key]).map(
        lambda value: f"{key}={json.dumps(value)}"  # JSON is YAML
    )
)
OVERRIDES = st.one_of(
    st.builds("{}={}".format, OVERRIDE_KEYS, YAML_VALUES | st.text(max_size=20)),
    PLAUSIBLE_OVERRIDES,
    st.text(max_size=30),
)


# --------------------------------------------------------------------------- files
def yaml_text_of(data: Any) -> str:
    import yaml

    try:
        return yaml.safe_dump(data, allow_unicode=True)
    except (ValueError, yaml.YAMLError):  # a 5000-digit int cannot be dumped either
        return "tuner: {seed: 1}\n"


FILE_CONTENTS = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"\xff\xfe\x00t",
            b"tuner:\n  seed: \xff\n",
            b"\xef\xbb\xbftuner: {seed: 1}\n",
            b"- 1\n- 2\n",
            b"42\n",
            b"~\n",
            b"",
            b"--- 1\n--- 2\n",
            b"tuner: [unclosed\n",
            b"tuner:\n\tseed: 1\n",
            b"tuner: !!python/object/apply:os.system [ls]\n",
            b"tuner: {seed: 2020-13-45}\n",
            b"tuner: {seed: " + b"9" * 5000 + b"}\n",
            b"[" * 5000 + b"]" * 5000,
            b"".join(b"  " * i + b"k:\n" for i in range(2000)),
            b"&a [*a]\n",
            b"? [1, 2]\n: x\n",
            b"{[1]: 2}\n",
        ]
    ),
    st.text(max_size=64).map(lambda s: s.encode("utf-8", "surrogatepass")),
    config_dicts().map(lambda d: yaml_text_of(d).encode("utf-8", "surrogatepass")),
    YAML_VALUES.map(lambda v: ("tuner:\n  seed: " + v + "\n").encode("utf-8", "surrogatepass")),
)
