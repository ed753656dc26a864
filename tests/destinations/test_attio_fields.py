"""Attio's attribute endpoints (list with pagination, create) against the local Attio fake."""

import pytest

from beton_pipeline.core.crm_fields import FieldProposal
from beton_pipeline.destinations.attio_fields import AttioAttributes, AttioFieldsError
from tests.fakes.attio_api import STANDARD_ATTRIBUTES, FakeAttioRecords

KEY = "attio-SECRET-fields-9f8e"
READ_WRITE = "record_permission:read object_configuration:read object_configuration:read-write"


def new_score(slug: str = "beton_score") -> FieldProposal:
    return FieldProposal("score", "create", slug, "Beton score", "number", "no attribute of that name or type")


def test_list_reads_every_page_archived_included():
    with FakeAttioRecords(KEY) as attio:
        for i in range(7):
            attio.add_attribute("companies", f"custom_{i}", f"Custom {i}", "text", archived=i == 6)
        listed = AttioAttributes(KEY, attio.url).list("companies", page_size=4)
        pages = [r.path for r in attio.successes()]
    standard = [a[0] for a in STANDARD_ATTRIBUTES["companies"]]
    assert [a["api_slug"] for a in listed] == standard + [f"custom_{i}" for i in range(7)]
    assert listed[-1]["is_archived"] is True
    total = len(standard) + 7  # 17: pages of 4, 4, 4, 4, 1
    assert len(pages) == total // 4 + 1
    assert pages[1] == "/v2/objects/companies/attributes?limit=4&offset=4&show_archived=true"


def test_create_posts_attios_body_and_a_taken_slug_is_a_paragraph():
    with FakeAttioRecords(KEY) as attio:
        attio.identity["scope"] = READ_WRITE
        client = AttioAttributes(KEY, attio.url)
        created = client.create("companies", new_score(), "Written by beton.")
        assert created["api_slug"] == "beton_score" and created["type"] == "number"
        body = attio.successes()[-1].json()
        assert body == {
            "data": {
                "title": "Beton score",
                "description": "Written by beton.",
                "api_slug": "beton_score",
                "type": "number",
                "is_required": False,
                "is_unique": False,
                "is_multiselect": False,
                "config": {},
            }
        }
        assert attio.attribute("companies", "beton_score")["description"] == "Written by beton."
        with pytest.raises(AttioFieldsError, match="the slug is taken \\(HTTP 409\\)"):
            client.create("companies", new_score(), "again")
        assert attio.requests[-1].status == 409


def test_errors_are_paragraphs_with_the_scope_and_never_the_key():
    with FakeAttioRecords(KEY) as attio:
        client = AttioAttributes(KEY, attio.url)
        with pytest.raises(AttioFieldsError) as denied:  # the default fake key reads but cannot write
            client.create("companies", new_score(), "d")
        assert "needs the scope object_configuration:read-write" in str(denied.value)
        attio.fail_next(400, body={"status_code": 400, "message": f"bad request for key {KEY}"})
        with pytest.raises(AttioFieldsError) as echoed:
            client.list("companies")
        assert KEY not in str(echoed.value) and "[redacted]" in str(echoed.value)
        with pytest.raises(AttioFieldsError, match="refused the key in BETON_ATTIO_API_KEY \\(HTTP 401\\)"):
            AttioAttributes("wrong-key", attio.url).list("companies")
        with pytest.raises(AttioFieldsError, match="no object 'accounts'"):
            client.list("accounts")
        url = attio.url
    with pytest.raises(AttioFieldsError, match=f"Attio at {url} did not answer"):
        client.list("companies")
    with pytest.raises(AttioFieldsError, match="BETON_ATTIO_API_KEY is not set"):
        AttioAttributes("", url)
