"""Layer-selection specs resolved against model depths, and the errors a user sees for bad ones."""

from __future__ import annotations

import pytest

from gfsa.nn.layers import SPEC_FORMS, LayerSpecError, normalize_spec, select_layers, spec_tag

DEPTHS = [1, 2, 12, 24]


def expected(spec: str, n: int) -> list[int]:
    """The documented meaning of each named form, written independently of the implementation."""
    return {
        "none": [],
        "all": list(range(n)),
        # GFSA_even: the 2nd, 4th, ... layer counting from 1.
        "selected": [i for i in range(n) if (i + 1) % 2 == 0],
        "even": [i for i in range(n) if i % 2 == 0],
        "odd": [i for i in range(n) if i % 2 == 1],
    }[spec]


@pytest.mark.parametrize("n", DEPTHS)
@pytest.mark.parametrize("spec", ["none", "all", "selected", "even", "odd"])
def test_named_forms(spec, n):
    assert select_layers(spec, n) == expected(spec, n)
    assert select_layers(f"  {spec.upper()} ", n) == expected(spec, n)  # as typed on a command line


def test_named_forms_on_twelve_layers():
    assert select_layers("selected", 12) == [1, 3, 5, 7, 9, 11]
    assert select_layers("even", 12) == [0, 2, 4, 6, 8, 10]
    assert select_layers("all", 12) == list(range(12))
    assert select_layers("selected", 1) == []  # a 1-layer model has no 2nd layer


@pytest.mark.parametrize("n", DEPTHS)
def test_none_forms(n):
    assert select_layers(None, n) == []
    assert select_layers([], n) == []
    assert select_layers("[]", n) == []


@pytest.mark.parametrize("n", DEPTHS)
def test_first_and_last(n):
    for count in {1, n // 2 or 1, n}:
        assert select_layers(f"first:{count}", n) == list(range(count))
        assert select_layers(f"last:{count}", n) == list(range(n - count, n))


@pytest.mark.parametrize("n", [2, 12, 24])
def test_lists_with_negative_indices(n):
    assert select_layers([0, -1], n) == [0, n - 1]
    assert select_layers([-1, 0, 1, 1], n) == sorted({0, 1, n - 1})  # sorted, unique
    assert select_layers((1,), n) == [1]
    assert select_layers(1, n) == [1]
    assert select_layers(-n, n) == [0]


@pytest.mark.parametrize("n", [12, 24])
def test_hydra_style_strings(n):
    assert select_layers("[1, 3]", n) == [1, 3]
    assert select_layers("[1,3]", n) == [1, 3]
    assert select_layers("[ -1 , 0 ]", n) == [0, n - 1]
    assert select_layers("[5]", n) == [5]


def test_one_layer_model():
    assert select_layers("all", 1) == [0]
    assert select_layers([-1], 1) == [0]
    assert select_layers("first:1", 1) == select_layers("last:1", 1) == [0]


@pytest.mark.parametrize(
    "spec, why",
    [
        ("last:40", "last:N needs 1 <= N <= 12"),
        ("first:0", "first:N needs 1 <= N <= 12"),
        ("first:13", "first:N needs 1 <= N <= 12"),
        ("first:x", "'x' is not a layer count"),
        ("sometimes", "unknown spec"),
        ("", "empty (the baseline is gfsa.layers=none)"),
        ("  ", "empty (the baseline is gfsa.layers=none)"),
        ("1,3", "unknown spec"),
        (12, "index 12 is out of range 0..11"),
        ([12], "index 12 is out of range 0..11"),
        ([-13], "index -13 is out of range 0..11"),
        ("[0, 12]", "index 12 is out of range 0..11"),
        ("[1, a]", "list items must be integers"),
        ("[1.5]", "list items must be integers"),
        ([1.5], "list items must be integers, got 1.5"),
        ([True], "list items must be integers, got True"),
        (True, "not a layer spec"),
        (False, "not a layer spec"),
        (3.0, "not a layer spec"),
    ],
)
def test_errors_name_the_valid_forms_and_the_depth(spec, why):
    with pytest.raises(LayerSpecError) as err:
        select_layers(spec, 12)
    message = str(err.value)
    assert why in message
    assert f"gfsa.layers={spec!r}" in message
    assert SPEC_FORMS in message
    for form in ("none", "all", "selected", "even", "odd", "first:N", "last:N", "[i, j, ...]"):
        assert form in message
    assert "12-layer model" in message


def test_error_is_a_value_error():
    """Callers that catch ValueError (Hydra, argparse wrappers) also see a bad spec."""
    with pytest.raises(ValueError):
        select_layers("sometimes", 12)


@pytest.mark.parametrize("n", [0, -1])
def test_model_without_layers(n):
    with pytest.raises(LayerSpecError, match=rf"no attention layers to select from \(num_layers={n}\)"):
        select_layers("all", n)


@pytest.mark.parametrize(
    "spellings, form, tag",
    [
        ((-1, "-1", [-1], "[-1]", " [ -1 ] ", (-1,)), [-1], "L-1"),
        ((3, "3", [3], "[3]", "+3"), [3], "L3"),
        (([3, 1, 1], "[1,3]", "[3, 1]", (1, 3)), [1, 3], "L1_3"),
        ((None, [], "[]", "none", " NONE "), "none", "none"),
        (("selected", "Selected", " selected "), "selected", "selected"),
        (("last:3", "LAST:3", "last: 3"), "last:3", "last-3"),
    ],
)
def test_every_spelling_of_a_spec_is_one_spec_and_one_directory_name(spellings, form, tag):
    """`gfsa.layers=-1` on the command line, `[-1]` in a YAML file and `gfsa layers -1 6` mean one thing
    (and name one run directory)."""
    for spec in spellings:
        assert normalize_spec(spec) == form, spec
        assert spec_tag(spec) == tag, spec
    assert len({str(select_layers(s, 6)) for s in spellings}) == 1


def test_gfsa_layers_command_takes_negative_indices():
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "gfsa"
    out = subprocess.run([str(exe), "layers", "-1", "6"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5"]
    empty = subprocess.run([str(exe), "layers", "", "6"], capture_output=True, text=True, check=False)
    assert empty.returncode == 2 and "empty (the baseline is gfsa.layers=none)" in empty.stderr
