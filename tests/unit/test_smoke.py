from domain.errors import Conflict, DomainError


def test_domain_errors_carry_detail_and_extra() -> None:
    err = Conflict("taken", other="x")
    assert isinstance(err, DomainError)
    assert err.detail == "taken"
    assert err.extra == {"other": "x"}
