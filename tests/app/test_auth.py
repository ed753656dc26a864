"""The app token's session and CSRF tokens: valid only as made, only with the token, only while fresh."""

from beton_pipeline.app import auth

TOKEN = "app-token-for-tests"


def test_a_session_is_valid_as_made_and_for_its_hours_only():
    cookie = auth.new_session(TOKEN, now=1_000_000)
    nonce = auth.session_nonce(cookie, TOKEN, now=1_000_000 + 60)
    assert nonce is not None and nonce.startswith("1000000.")
    assert auth.session_nonce(cookie, TOKEN, now=1_000_000 + auth.SESSION_HOURS * 3600) == nonce
    assert auth.session_nonce(cookie, TOKEN, now=1_000_000 + auth.SESSION_HOURS * 3600 + 1) is None
    assert auth.session_nonce(cookie, TOKEN, now=1_000_000 - 1) is None  # issued in the future
    assert auth.session_nonce(cookie, "another-token", now=1_000_060) is None  # a new token ends every session
    issued, rest, mac = cookie.split(".")
    assert auth.session_nonce(f"{int(issued) + 3600}.{rest}.{mac}", TOKEN, now=1_000_060) is None  # tampered
    for broken in (None, "", "a.b", "x.y.z", cookie + ".x"):
        assert auth.session_nonce(broken, TOKEN) is None
    assert auth.session_nonce(cookie, None) is None


def test_csrf_tokens_belong_to_one_session():
    a = auth.session_nonce(auth.new_session(TOKEN), TOKEN)
    b = auth.session_nonce(auth.new_session(TOKEN), TOKEN)
    assert auth.csrf_matches(auth.csrf_token(TOKEN, a), TOKEN, a)
    assert not auth.csrf_matches(auth.csrf_token(TOKEN, a), TOKEN, b)
    assert not auth.csrf_matches(None, TOKEN, a) and not auth.csrf_matches(auth.csrf_token(TOKEN, a), None, a)
    assert not auth.csrf_matches("é", TOKEN, a)  # typed by anyone: never an error
    issued, rest, _ = auth.new_session(TOKEN).split(".")
    assert auth.session_nonce(f"{issued}.{rest}.é", TOKEN) is None and auth.session_nonce(f"²1.{rest}.x", TOKEN) is None
    assert auth.token_matches(TOKEN, TOKEN) and not auth.token_matches(TOKEN[:-1], TOKEN)
    assert not auth.token_matches("", "") and not auth.token_matches(None, TOKEN)
