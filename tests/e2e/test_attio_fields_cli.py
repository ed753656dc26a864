"""`beton destinations attio fields` as a user runs it (the installed console script, in a subprocess) against the
local Attio fake: the dry run changes nothing, --apply creates the attributes and records the mapping in the
settings file (comments kept), a conflict blocks its field, and errors are paragraphs without the key. Then a
playbook with `field: score` plans an update of the mapped attribute and delivers it through the Attio sender."""

import os
import subprocess
import sys
from pathlib import Path

import polars as pl

from beton_pipeline.core.playbooks import match_accounts, plan_account_actions
from beton_pipeline.destinations.attio import AttioSender, update_payload
from beton_pipeline.settings import load_settings
from tests.core.test_playbooks import DAY, scores_frame
from tests.fakes import FakeAttio
from tests.fakes.attio_api import FakeAttioRecords

BETON = str(Path(sys.executable).parent / "beton")
KEY = "attio-SECRET-cli-fields-4b5c"
READ_WRITE = "record_permission:read object_configuration:read object_configuration:read-write"

SETTINGS = """\
# my settings: this comment must survive
windows:
  observation_days: 14   # two weeks

playbooks:
  - name: hot-accounts
    when: {min_score: 0.5}
    holdout_fraction: 0
    then:
      - {type: attio, field: score}   # mapped by `beton destinations attio fields`

destinations:
  dry_run: true   # nothing is sent yet
"""


def fields(tmp_path: Path, url: str, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess:
    env = {**os.environ, "BETON_CONFIG": str(tmp_path / "beton.yaml"), "BETON_ATTIO_BASE_URL": url}
    env.pop("BETON_ATTIO_API_KEY", None)
    if key is not None:
        env["BETON_ATTIO_API_KEY"] = key
    return subprocess.run(
        [BETON, "destinations", "attio", "fields", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )


def posts(attio: FakeAttioRecords) -> list:
    return [r for r in attio.requests if r.method == "POST"]


def test_dry_run_then_apply_creates_records_and_the_playbook_writes_the_score(tmp_path):
    config = tmp_path / "beton.yaml"
    config.write_text(SETTINGS)
    with FakeAttioRecords(KEY) as attio:
        attio.identity["scope"] = READ_WRITE
        dry = fields(tmp_path, attio.url)
        assert dry.returncode == 0, dry.stderr
        assert posts(attio) == [] and config.read_text() == SETTINGS  # nothing created, file unchanged
        lines = dry.stdout.splitlines()
        assert lines[0] == "# Attio companies: beton's fields (dry run: nothing changed)"
        assert lines[2].split()[:5] == ["score", "create", "beton_score", "Beton", "score"]
        assert '--apply would: create beton_score (number, "Beton score"), beton_rank (number' in dry.stdout
        assert f"record destinations.attio in {config}: object companies, score: beton_score, rank: beton_rank" in (
            dry.stdout
        )

        done = fields(tmp_path, attio.url, "--apply")
        assert done.returncode == 0, done.stderr
        assert [p.json()["data"]["api_slug"] for p in posts(attio)] == [
            "beton_score",
            "beton_rank",
            "beton_top_signals",
            "beton_why",
        ]
        created = {s: attio.attribute("companies", s) for s in ("beton_score", "beton_rank", "beton_top_signals")}
        assert {s: a["type"] for s, a in created.items()} == {
            "beton_score": "number",
            "beton_rank": "number",
            "beton_top_signals": "text",
        }
        assert attio.attribute("companies", "beton_why")["description"].startswith("Written by beton")

        text = config.read_text()
        assert text == SETTINGS + (
            "  attio:\n"
            "    object: companies\n"
            "    fields:\n"
            "      score: beton_score\n"
            "      rank: beton_rank\n"
            "      top_signals: beton_top_signals\n"
            "      why: beton_why\n"
        )
        assert KEY not in text and KEY not in done.stdout + done.stderr
        assert not list(tmp_path.glob(".beton.yaml*"))  # no temporary file left

        again = fields(tmp_path, attio.url)  # the recorded mapping is used; nothing to create
        assert again.returncode == 0 and "--apply would: create nothing;" in again.stdout
        assert [line.split()[1] for line in again.stdout.splitlines()[2:6]] == ["use"] * 4

    playbooks = load_settings(config).playbook_config()
    pb = playbooks.playbooks[0]
    matched = match_accounts(scores_frame(60), pb.when).filter(pl.col("is_crm_company"))
    planned = plan_account_actions(pb, matched, DAY, playbooks.destinations)
    assert len(planned) == matched.height > 0 and {a.destination for a in planned} == {"attio:companies.beton_score"}
    assert {a.status for a in planned} == {"dry_run"}  # destinations.dry_run: true, kept from the file
    with FakeAttio(KEY) as sink:
        sender = AttioSender(KEY, sink.url, timeout_seconds=5)
        results = [sender.send(update_payload(a.message), a.idempotency_key) for a in planned]
        assert {r.outcome for r in results} == {"sent"}
        scores = dict(zip(matched["account_id"], matched["score"], strict=True))
        assert sink.updates == [(a.account_id, {"beton_score": float(f"{scores[a.account_id]:.4f}")}) for a in planned]


def test_a_conflict_blocks_its_field_and_says_what_to_pass(tmp_path):
    config = tmp_path / "beton.yaml"
    config.write_text("destinations:\n  dry_run: true\n")
    with FakeAttioRecords(KEY) as attio:
        attio.identity["scope"] = READ_WRITE
        attio.add_attribute("companies", "lead_score", "Lead score", "text")
        done = fields(tmp_path, attio.url, "--apply")
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "score        conflict  lead_score" in done.stdout
        assert done.stderr.startswith("error: 1 field(s) not mapped (a conflict blocks --apply for that field):\n")
        assert (
            "score: 'Lead score' (lead_score) looks like the score field but is of type text, and beton writes a "
            "number. Change that attribute in Attio (rename it, or unarchive it when archived), or pass "
            "--use score=SLUG" in done.stderr
        )
        assert [p.json()["data"]["api_slug"] for p in posts(attio)] == ["beton_rank", "beton_top_signals", "beton_why"]
        assert attio.attribute("companies", "lead_score")["type"] == "text"  # the user's attribute is left alone
        mapped = load_settings(config).playbook_config().destinations.attio.fields.mapped()
        assert mapped == {"rank": "beton_rank", "top_signals": "beton_top_signals", "why": "beton_why"}

        chosen = fields(tmp_path, attio.url, "--use", "score=account_score", "--apply")
        assert chosen.returncode == 0, chosen.stderr
        assert attio.attribute("companies", "account_score")["type"] == "number"
        assert load_settings(config).playbook_config().destinations.attio.fields.score == "account_score"


def test_nothing_is_created_when_the_recorded_settings_would_not_load(tmp_path):
    """A playbook writes a field that is in conflict, or the file cannot be rewritten: --apply stops before any
    attribute is created in Attio, says why and what to pass, and leaves the file as it was."""
    config = tmp_path / "beton.yaml"
    config.write_text(SETTINGS)  # its playbook writes `field: score`
    with FakeAttioRecords(KEY) as attio:
        attio.identity["scope"] = READ_WRITE
        attio.add_attribute("companies", "lead_score", "Lead score", "text")
        done = fields(tmp_path, attio.url, "--apply")
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "field: score has no Attio attribute" in done.stderr
        assert "--use score=SLUG" in done.stderr and "Nothing was created in Attio." in done.stderr
        assert posts(attio) == [] and config.read_text() == SETTINGS

        twice = "destinations:\n  dry_run: true\ndestinations:\n  dry_run: false\n"  # PyYAML: the last one wins
        config.write_text(twice)
        done = fields(tmp_path, attio.url, "--apply")
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "cannot be rewritten keeping its comments" in done.stderr and "Nothing was created" in done.stderr
        assert posts(attio) == [] and config.read_text() == twice


def test_errors_are_short_paragraphs_without_the_key(tmp_path):
    config = tmp_path / "beton.yaml"
    config.write_text(SETTINGS)
    with FakeAttioRecords(KEY) as attio:  # the fake's default key reads attributes but cannot create them
        denied = fields(tmp_path, attio.url, "--apply")
        assert denied.returncode == 1 and "Traceback" not in denied.stderr
        paragraph = denied.stderr[denied.stderr.index("error: ") :]
        assert "lacks a permission (HTTP 403) while creating beton_score on companies" in paragraph
        assert "needs the scope object_configuration:read-write" in paragraph
        assert f"{config} was not changed" in paragraph and config.read_text() == SETTINGS

        attio.fail_next(403, body={"status_code": 403, "type": "auth_error", "message": f"no scope for {KEY}"})
        listing = fields(tmp_path, attio.url)
        assert listing.returncode == 1 and "needs the scope object_configuration:read." in listing.stderr
        assert KEY not in listing.stdout + listing.stderr

        attio.fail_next(500)
        failed = fields(tmp_path, attio.url)
        assert failed.returncode == 1 and "Attio answered HTTP 500 while listing" in failed.stderr

        unset = fields(tmp_path, attio.url, key=None)
        assert unset.returncode == 1 and unset.stderr.startswith("error: BETON_ATTIO_API_KEY is not set")
        url = attio.url
    gone = fields(tmp_path, url)
    assert gone.returncode == 1 and f"error: Attio at {url} did not answer" in gone.stderr
    assert "check BETON_ATTIO_BASE_URL" in gone.stderr and len(gone.stderr.splitlines()) <= 3
    assert config.read_text() == SETTINGS
