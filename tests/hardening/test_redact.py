"""The redactor knows each configured secret in every form it can take in text, and
every sink passes through it: logs, the state file, the GitHub summary, webhook bodies."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from rollout import redact
from rollout.errors import ErrorRecord
from rollout.redact import Redactor
from rollout.spec import parse_spec
from rollout.state import FileStateStore, ModelState

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def clean_redactor() -> Iterator[None]:
    redact.REDACTOR.clear()
    yield
    redact.REDACTOR.clear()


def spec_with_every_slot(tmp_path: Path) -> dict:
    token_file = tmp_path / "token"
    token_file.write_text("tok-from-file-8842\n")
    url_file = tmp_path / "url"
    url_file.write_text("https://hooks.example/services/T00/B00/XXsecretpathXX\n")
    return {
        "model": "iris", "registry": {"type": "git", "url": "/r"},
        "analysis": {"prometheus": {"url": "http://prom:9090", "bearer_token_file": str(token_file),
                                    "basic_auth_user_env": "T_USER", "basic_auth_password_env": "T_PASS",
                                    "headers_env": {"X-Scope-OrgID": "T_HDR"}},
                     "metrics": []},
        "webhooks": {"hooks": [{"name": "gate", "type": "pre-rollout", "url_env": "T_HOOK"}],
                     "notify": [{"name": "slack", "type": "slack", "url_file": str(url_file)}]},
    }


ENV = {"T_USER": "alice-user-77", "T_PASS": "p@ss w/rd+77", "T_HDR": "hdr-secret-5521",
       "T_HOOK": "https://hook.example/confirm?key=qk-8812"}


def test_every_credential_slot_of_a_spec_is_known_in_every_form(tmp_path: Path, monkeypatch) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    parse_spec(spec_with_every_slot(tmp_path))
    pair = base64.b64encode(b"alice-user-77:p@ss w/rd+77").decode()
    leaks = ["tok-from-file-8842", "p@ss w/rd+77", quote("p@ss w/rd+77", safe=""), quote_plus("p@ss w/rd+77"),
             pair, "hdr-secret-5521", "qk-8812", "/services/T00/B00/XXsecretpathXX",
             base64.b64encode(b"tok-from-file-8842").decode(), json.dumps("p@ss w/rd+77")[1:-1]]
    text = " | ".join(f"Authorization: Basic {pair}" if s == pair else s for s in leaks)
    clean = redact.scrub(text)
    for secret in leaks:
        assert secret not in clean, secret
    assert clean.count("***") >= len(leaks)


def test_url_userinfo_is_cut_even_when_nobody_registered_it() -> None:
    assert Redactor().scrub("cloning https://bob:hunter2@git.example/r.git failed") == \
        "cloning https://***@git.example/r.git failed"


def test_short_values_are_not_treated_as_secrets() -> None:
    r = Redactor()
    r.add("ab")
    assert r.scrub("abc ab") == "abc ab"


def test_every_log_record_is_scrubbed_whichever_logger_makes_it(caplog: pytest.LogCaptureFixture) -> None:
    redact.register("sk-live-4242-abcd")
    redact.install_logging()
    with caplog.at_level(logging.INFO):
        logging.getLogger("urllib3.connectionpool").info("GET /?token=%s", "sk-live-4242-abcd")
        logging.getLogger("rollout.engine").warning("failed: %s", ValueError("echo sk-live-4242-abcd"))
        try:
            raise RuntimeError("boom sk-live-4242-abcd")
        except RuntimeError:
            logging.getLogger("rollout.cli").exception("bug")
    assert "sk-live-4242-abcd" not in caplog.text
    assert caplog.text.count("***") >= 3


def test_the_state_file_is_scrubbed_whatever_a_provider_echoed(tmp_path: Path) -> None:
    redact.register("Bearer-tok-9931")
    store = FileStateStore(tmp_path)
    ms = ModelState(model="iris")
    saved = store.save(ms)
    evil = saved.model_copy(update={"previous": []})
    # A reason, as a provider could have echoed it (headers in an error body).
    from rollout.state import Event, RolloutState, VersionRecord

    r = RolloutState(id="r1", model="iris", stable=None, candidate=VersionRecord(version="v2", uri="/x"),
                     strategy="canary", spec={"note": "Bearer-tok-9931"}, plan=[], started_at=0.0,
                     reason='value "Bearer-tok-9931" is not a number',
                     events=[Event(at=0.0, kind="error", message="Authorization: Bearer-tok-9931")])
    store.save(evil.model_copy(update={"rollout": r}))
    text = (tmp_path / "state" / "iris.json").read_text()
    assert "Bearer-tok-9931" not in text and "***" in text
    assert store.load("iris").rollout.reason == 'value "***" is not a number'


@pytest.mark.parametrize("secret", ["plain-secret-4711", 'quo"ted\\back-4711', "ctrl\tchar-4711", "ünïcode-4711"])
def test_stored_state_is_masked_when_it_holds_a_secret_and_unchanged_when_not(secret: str) -> None:
    """The state writer skips the string walk when the JSON text cannot hold a secret: the
    fast answer must equal the walk's, for secrets JSON writes escaped too."""
    from rollout.state import Event, RolloutState, VersionRecord

    redact.register(secret)

    def state(note: str) -> ModelState:
        r = RolloutState(id="r1", model="iris", stable=None, candidate=VersionRecord(version="v2", uri="/x"),
                         strategy="canary", spec={"note": note, "ref": "iris@champion"}, plan=[], started_at=0.0,
                         reason=f"echoed: {note}", events=[Event(at=0.0, kind="error", message=note)])
        return ModelState(model="iris", rollout=r)

    dirty = json.loads(redact.scrubbed_json(state(secret)))
    assert secret not in json.dumps(dirty, ensure_ascii=False) and dirty["rollout"]["reason"] == "echoed: ***"
    clean = state("nothing to hide")
    assert json.loads(redact.scrubbed_json(clean)) == json.loads(clean.model_dump_json())
    url = json.loads(redact.scrubbed_json(state("see https://bob:pw@host/x")))
    assert url["rollout"]["reason"] == "echoed: see https://***@host/x"


def test_error_records_are_scrubbed_and_one_bounded_line() -> None:
    redact.register("tok-abc-123456")
    rec = ErrorRecord.of(ValueError("could not convert 'Bearer tok-abc-123456'\n\x1b[2J" + "x" * 5000))
    assert rec.kind == "ValueError"
    assert "tok-abc-123456" not in rec.message and "\x1b" not in rec.message and "\n" not in rec.message
    assert len(rec.message) < 600


def test_webhook_and_notification_bodies_are_scrubbed(monkeypatch) -> None:
    from rollout import gates

    redact.register("leak-me-7777")
    sent = {}

    class Http:
        def post(self, url, json, timeout):  # noqa: A002 - requests' own keyword
            sent["body"] = json

            class R:
                status_code = 200
            return R()

    gates.post_json("http://127.0.0.1:9/x", {"reason": "token leak-me-7777", "nested": [{"m": "leak-me-7777"}]},
                    1.0, 0, session=Http())
    assert "leak-me-7777" not in json.dumps(sent["body"])


def test_github_summary_and_outputs_are_scrubbed(tmp_path: Path) -> None:
    from rollout.integrations.github import GitHubActions

    redact.register("gh-secret-5555")
    summary, outputs = tmp_path / "summary.md", tmp_path / "out"
    lines: list[str] = []
    gh = GitHubActions({"GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(outputs)}, write=lines.append)
    gh.finish(None, 1, error="Prometheus said gh-secret-5555", model="iris")
    assert "gh-secret-5555" not in summary.read_text() + outputs.read_text()
