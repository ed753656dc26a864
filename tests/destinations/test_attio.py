"""Attio: PATCH a company record's attribute with a bearer key, against a local Attio."""

from beton_pipeline.core.playbooks import AttioRecordUpdate
from beton_pipeline.destinations.attio import AttioSender, record_update, record_url, update_payload
from tests.fakes import FakeAttio

KEY = "attio-key-0123456789"


def test_record_url_encodes_path_parts():
    assert (
        record_url("https://api.attio.com/", "companies", "rec/../x")
        == "https://api.attio.com/v2/objects/companies/records/rec%2F..%2Fx"
    )


def test_update_payload():
    assert update_payload(AttioRecordUpdate("companies", "rec_1", "beton_score", 0.42)) == {
        "object": "companies",
        "record_id": "rec_1",
        "values": {"beton_score": 0.42},
    }


def test_patch_shape_and_outcomes():
    with FakeAttio(KEY, known_records={"rec_1"}) as attio:
        sender = AttioSender(KEY, attio.url, timeout_seconds=5)
        ok = sender.send(record_update("companies", "rec_1", {"beton_score": 0.42}), "k")
        assert (ok.outcome, ok.response_id) == ("sent", "rec_1")
        req = attio.successes()[0]
        assert req.method == "PATCH" and req.path == "/v2/objects/companies/records/rec_1"
        assert req.headers["Authorization"] == f"Bearer {KEY}"
        assert req.json() == {"data": {"values": {"beton_score": 0.42}}}

        missing = sender.send(record_update("companies", "rec_404", {"beton_score": 0.1}), "k")
        assert (missing.outcome, missing.status_code) == ("fail", 404)
        attio.fail_next(409)  # concurrent_write_conflict: worth another attempt
        assert sender.send(record_update("companies", "rec_1", {"beton_score": 0.1}), "k").outcome == "retry"
        attio.fail_next(429, retry_after=2)
        limited = sender.send(record_update("companies", "rec_1", {"beton_score": 0.1}), "k")
        assert (limited.outcome, limited.retry_after) == ("retry", 2.0)
        attio.fail_next(503)
        assert sender.send(record_update("companies", "rec_1", {"beton_score": 0.1}), "k").outcome == "retry"


def test_bad_key_fails_and_is_redacted():
    with FakeAttio(KEY) as attio:
        result = AttioSender("wrong-key-abc", attio.url, timeout_seconds=5).send(
            record_update("companies", "rec_1", {"a": 1}), "k"
        )
    assert (result.outcome, result.status_code) == ("fail", 401)
    assert "wrong-key-abc" not in result.error
