"""The advisory prediction beside a program: its call at the band's edges, the band chosen on held-out
programs, its storage with the program (append-only) and the console page that shows it, served by a real
uvicorn."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_safety_console import EXPERT, FORM, GOOD, PASSWORD, cookie_of, csrf_of, form, request, serve

from safety.advisory import ASK_A_PERSON, LIKELY_TO_FAIL, LIKELY_TO_PRINT, Advisory, AdvisoryError
from safety.approvals import ApprovalError, ApprovalStore
from safety.console.config import ConsoleConfig
from training.eval_stats import choose_abstain_band


def advice(p: float, low: float = 0.3, high: float = 0.7) -> Advisory:
    return Advisory("classifier", p, low, high, "trained on a test dataset")


def test_the_call_at_the_bands_edges() -> None:
    assert advice(0.29).call == LIKELY_TO_FAIL
    assert advice(0.3).call == ASK_A_PERSON  # the band is [low, high)
    assert advice(0.69).call == ASK_A_PERSON
    assert advice(0.7).call == LIKELY_TO_PRINT
    assert advice(0.5, 0.5, 0.5).call == LIKELY_TO_PRINT  # an empty band asks nobody
    assert advice(0.0, 0.0, 1.0).call == ASK_A_PERSON and advice(1.0, 0.0, 1.0).call == LIKELY_TO_PRINT
    assert Advisory.from_dict(advice(0.42).as_dict()) == advice(0.42)


@pytest.mark.parametrize(("p", "low", "high", "match"), [
    (1.2, 0.3, 0.7, "p_success 1.2"), (float("nan"), 0.3, 0.7, "p_success nan"), (0.5, -0.1, 0.7, "abstain_low"),
    (0.5, 0.8, 0.7, "low end must not exceed")])
def test_out_of_range_advice_is_refused_with_its_value(p: float, low: float, high: float, match: str) -> None:
    with pytest.raises(AdvisoryError, match=match):
        advice(p, low, high)
    with pytest.raises(AdvisoryError, match="predictor"):
        Advisory(" ", 0.5, 0.3, 0.7)


def test_the_band_is_the_narrowest_that_reaches_the_target() -> None:
    # Outside [0.45, 0.55) two of three are right; outside [0.425, 0.575) both that are left are right.
    p, y = [0.1, 0.45, 0.55, 0.9], [False, True, False, True]
    assert choose_abstain_band(p, y, 0.95) == (0.425, 0.575)
    assert choose_abstain_band(p, y, 0.6) == (0.45, 0.55)
    assert choose_abstain_band(p, y, 0.5) == (0.5, 0.5)  # no band needed: half are right
    assert choose_abstain_band([0.9, 0.1], [False, True], 0.95) == (0.0, 1.0)  # always wrong: ask for all
    with pytest.raises(ValueError, match="target accuracy 1.5"):
        choose_abstain_band(p, y, 1.5)


@pytest.fixture
def store(tmp_path: Path) -> ApprovalStore:
    return ApprovalStore(tmp_path / "approvals.db")


def test_the_advisory_is_stored_with_the_program_and_cannot_be_changed(store: ApprovalStore) -> None:
    advised = store.submit(GOOD, printer="ender3-klipper", job="advised", advisory=advice(0.55))
    plain = store.submit(GOOD, printer="ender3-klipper", job="plain")
    assert store.program(advised).advisory == advice(0.55) and store.program(plain).advisory is None
    with contextlib.closing(sqlite3.connect(store.path)) as db, pytest.raises(sqlite3.IntegrityError,
                                                                               match="cannot be changed"):
        db.execute("UPDATE advisories SET advisory_json = '{}' WHERE program_id = ?", (advised,))
    with pytest.raises(ApprovalError, match="expected a safety.advisory.Advisory, got dict"):
        store.submit(GOOD, printer="ender3-klipper", job="bad", advisory={"p_success": 1.0})  # type: ignore[arg-type]
    assert len(store.programs()) == 2


@pytest.fixture
def console(tmp_path: Path) -> Iterator[tuple[object, dict[str, int], str]]:
    config = ConsoleConfig(db=str(tmp_path / "approvals.db"))
    store = ApprovalStore(config.db)
    store.accounts.add_user("alice", PASSWORD)
    ids = {"unsure": store.submit(GOOD, printer="ender3-klipper", job="unsure", expert_gcode=EXPERT,
                                  advisory=advice(0.55)),
           "confident": store.submit(GOOD, printer="ender3-klipper", job="confident", advisory=advice(0.93)),
           "none": store.submit(GOOD, printer="ender3-klipper", job="none")}
    with serve(store, config) as served:
        page = request(served, "GET", "/login")
        reply = request(served, "POST", "/login", form({"username": "alice", "password": PASSWORD,
                                                        "csrf_token": csrf_of(page.body)}),
                        {**FORM, "Cookie": cookie_of(page)})
        yield served, ids, cookie_of(reply)


def test_the_console_shows_the_advice_beside_the_program(console: tuple[object, dict[str, int], str]) -> None:
    served, ids, cookie = console
    unsure = request(served, "GET", f"/program/{ids['unsure']}", headers={"Cookie": cookie})  # type: ignore[arg-type]
    assert unsure.status == 200
    assert 'id="advisory" class="advisory advisory-ask-a-person"><strong>ask a person</strong>' in unsure.body
    assert "p(success) = 0.55" in unsure.body and "trained on a test dataset" in unsure.body
    assert 'id="approve"' in unsure.body  # advice decides nothing: the reviewer still can
    confident = request(served, "GET", f"/program/{ids['confident']}", headers={"Cookie": cookie})  # type: ignore[arg-type]
    assert "<strong>likely to print</strong>" in confident.body and "p(success) = 0.93" in confident.body
    plain = request(served, "GET", f"/program/{ids['none']}", headers={"Cookie": cookie})  # type: ignore[arg-type]
    assert plain.status == 200 and 'id="advisory"' not in plain.body


def test_write_refuses_an_advisor_it_cannot_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.write import main  # loads torch: only this test needs it

    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"\x80\x04not a pickle")
    out = str(tmp_path / "part.gcode")
    assert main(["--model", "unused", "--out", out, "--advisor", str(junk)]) == 2
    assert "give --db too" in capsys.readouterr().err
    assert main(["--model", "unused", "--out", out, "--advisor", str(junk), "--db", str(tmp_path / "a.db")]) == 2
    assert "junk.pkl: not readable" in capsys.readouterr().err
