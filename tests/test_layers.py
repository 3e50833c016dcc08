import pytest

from petl.errors import PetlError
from petl.layers import parse_layers


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("5", [5]),
        ("0,3,7", [0, 3, 7]),
        ("8-11", [8, 9, 10, 11]),
        ("all", list(range(12))),
        (None, list(range(12))),
        ("0,4-5", [0, 4, 5]),
        ("-1", [11]),
        (3, [3]),
        ("3,3", [3]),
    ],
)
def test_layer_specs(spec, expected):
    assert parse_layers(spec, 12) == expected


@pytest.mark.parametrize("spec", ["12", "0,12", "10-12", "-13", "x", "5-3"])
def test_bad_layer_specs_are_errors_naming_the_value(spec):
    with pytest.raises(PetlError) as err:
        parse_layers(spec, 12, "lora_layers")
    assert "--lora_layers" in str(err.value)
    assert "\n" not in str(err.value)
