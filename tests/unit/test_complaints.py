"""pydantic's complaints in Corral's words, the same whoever parsed the value: a VM's create
request, a stack file, a request body of the API."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.domain import complaints, specs, stackfile
from corral.errors import InvalidSpec


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flag: bool = True
    count: int = Field(1, ge=1, le=8)
    rate: float = Field(1.0, gt=0)
    text: str = Field("", max_length=4)
    name: str = Field("a", pattern=complaints.NAME_PATTERN)
    items: list[int] = []


@pytest.mark.parametrize(("body", "said"), [
    ({"flag": -1}, "-1 is not true or false"),
    ({"count": "x"}, "'x' is not a whole number"),
    ({"count": 1.5}, "1.5 is not a whole number"),
    ({"count": 0}, "0 is too small; give at least 1"),
    ({"count": 9}, "9 is too large; give at most 8"),
    ({"rate": 0}, "0 is too small; give more than 0"),
    ({"rate": "fast"}, "'fast' is not a number"),
    ({"text": 5}, "5 is not text"),
    ({"text": "abcdef"}, "6 characters is too long; use at most 4"),
    ({"name": "Bad_Name"}, "'Bad_Name' is not a valid name; use 1-32 lowercase letters"),
    ({"items": 3}, "3 is not a list"),
    ({"colour": "red"}, "unknown field"),
])
def test_each_kind_of_mistake_is_said_in_words(body: dict[str, object], said: str) -> None:
    with pytest.raises(ValidationError) as err:
        _M.model_validate(body)
    assert complaints.reason(err.value.errors()[0]).startswith(said)


def test_a_vm_request_and_a_stack_file_say_the_same() -> None:
    with pytest.raises(InvalidSpec) as request:
        specs.parse_create({"name": "a", "cpus": "many"})
    with pytest.raises(InvalidSpec) as stack:
        stackfile.load("vms:\n  a:\n    cpus: many\n", "s.yaml")
    assert request.value.message == "cpus: 'many' is not a whole number"
    assert stack.value.message == "s.yaml:3: vms.a.cpus: 'many' is not a whole number"


def test_a_value_nested_a_billion_deep_is_shown_short() -> None:
    bomb: list[object] = [1]
    for _ in range(11):  # 9**11 elements, as YAML aliases make them
        bomb = [bomb] * 9
    with pytest.raises(ValidationError) as err:
        _M.model_validate({"count": bomb})
    said = complaints.reason(err.value.errors()[0])
    assert said.endswith("is not a whole number") and len(said) < 80
