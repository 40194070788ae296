"""Django: the installed app configures the bridge from settings.CUSTOMERIO or the
environment; CustomerIOMiddleware binds the request's person, in sync and async stacks.

Each test runs a small Django site in a child process (tests/programs/django_site.py):
``settings.configure()`` and ``django.setup()`` happen once per process, so they must not
happen in pytest's.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import customerio_logging as cio
from customerio_logging.testing import TrackAPIEmulator

from .helpers import program, run_python

pytest.importorskip("django")

MIDDLEWARE = "customerio_logging.integrations.django.CustomerIOMiddleware"
SESSIONS = "django.contrib.sessions.middleware.SessionMiddleware"
CLIENTS = ["sync", "async"]


class Declared(cio.Event, name="declared"):
    pass


def run_site(
    requests: list[dict[str, Any]] = (),  # type: ignore[assignment]
    *,
    emulator: TrackAPIEmulator | None = None,
    env: dict[str, str] | None = None,
    quick: bool = True,
    **site: Any,
) -> dict[str, Any]:
    """Run the site in a child with these settings (see the program's docstring); what it
    printed. With ``emulator`` it sends there; unless ``quick`` is False or ``customerio``
    is given, its CUSTOMERIO setting holds a short flush interval and no spool."""
    if emulator is not None and quick and "customerio" not in site:
        site["customerio"] = {"flush_interval": 0.05, "spool_path": False}
    result = run_python(
        program("django_site"),
        json.dumps(list(requests)),
        env={"SITE": json.dumps(site), **(env or {})},
        emulator=emulator,
        clean=True,
        check=True,
    )
    printed: dict[str, Any] = json.loads(result.stdout)
    return printed


def sent(emulator: TrackAPIEmulator) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """Each event the emulator accepted: name, identifiers, attributes."""
    return [(op["name"], op["identifiers"], op.get("attributes", {})) for op in emulator.events()]


class TestMiddleware:
    @pytest.mark.parametrize("client", CLIENTS)
    @pytest.mark.parametrize("view", ["/signup/", "/signup-async/"])
    def test_a_view_logging_without_a_user_id_sends_for_the_logged_in_user(
        self, emulator: TrackAPIEmulator, client: str, view: str
    ) -> None:
        out = run_site(
            [{"path": f"{view}?plan=pro", "user": 42, "client": client}], emulator=emulator
        )
        assert out["responses"][0]["status"] == 200
        assert out["flushed"]
        assert sent(emulator) == [("signed_up", {"id": "42"}, {"plan": "pro"})]

    @pytest.mark.parametrize("client", CLIENTS)
    def test_a_logged_email_is_data_of_the_logged_in_user(
        self, emulator: TrackAPIEmulator, client: str
    ) -> None:
        request = {"path": "/change-email/?email=new@example.com", "user": 42, "client": client}
        run_site([request], emulator=emulator)
        assert sent(emulator) == [("email_changed", {"id": "42"}, {"email": "new@example.com"})]

    @pytest.mark.parametrize("client", CLIENTS)
    def test_a_call_with_user_id_none_is_sent_by_its_email(
        self, emulator: TrackAPIEmulator, client: str
    ) -> None:
        request = {"path": "/invite/?email=friend@example.com", "user": 42, "client": client}
        run_site([request], emulator=emulator)
        assert sent(emulator) == [("invited", {"email": "friend@example.com"}, {})]

    @pytest.mark.parametrize("client", CLIENTS)
    def test_the_binding_ends_with_the_request(
        self, emulator: TrackAPIEmulator, client: str
    ) -> None:
        out = run_site(
            [
                {"path": "/signup/?plan=pro", "user": 42, "client": client},
                {"path": "/signup/?plan=free", "client": client},  # nobody: not sendable
            ],
            emulator=emulator,
        )
        assert out["stats"] == {"sent": 1, "invalid": 1}
        assert sent(emulator) == [("signed_up", {"id": "42"}, {"plan": "pro"})]

    @pytest.mark.parametrize("client", CLIENTS)
    def test_an_anonymous_visitor_is_sent_with_the_session_anonymous_id(
        self, emulator: TrackAPIEmulator, client: str
    ) -> None:
        out = run_site(
            [
                {"path": "/visit/?anonymous_id=anon-7", "client": client},
                {"path": "/signup/?plan=pro", "client": client},
                {"path": "/signup/?plan=team", "user": 42, "client": client},
            ],
            emulator=emulator,
            anonymous_key="cio_anonymous_id",
        )
        assert [r["status"] for r in out["responses"]] == [200, 200, 200]
        assert sent(emulator) == [
            ("signed_up", {"anonymous_id": "anon-7"}, {"plan": "pro"}),
            ("signed_up", {"id": "42"}, {"plan": "team"}),  # logged in: the user alone
        ]

    def test_without_the_session_key_setting_no_anonymous_id_is_bound(
        self, emulator: TrackAPIEmulator
    ) -> None:
        out = run_site([{"path": "/signup/"}], emulator=emulator)
        assert out["stats"] == {"sent": 0, "invalid": 1}

    @pytest.mark.parametrize("client", CLIENTS)
    def test_a_user_that_cannot_be_read_is_warned_about_once_and_the_request_goes_on(
        self, emulator: TrackAPIEmulator, client: str
    ) -> None:
        broken = {"path": "/signup/", "user": "broken", "client": client}
        out = run_site([broken, broken], emulator=emulator)
        assert [r["status"] for r in out["responses"]] == [200, 200]
        (warning,) = out["warnings"]
        assert "could not read the request's person" in warning
        assert "RuntimeError: the user table is gone" in warning
        assert out["stats"] == {"sent": 0, "invalid": 2}

    @pytest.mark.parametrize("client", CLIENTS)
    def test_without_request_user_the_error_says_where_auth_goes(
        self, emulator: TrackAPIEmulator, client: str
    ) -> None:
        out = run_site(
            [{"path": "/signup/", "client": client}], emulator=emulator, middleware=[MIDDLEWARE]
        )
        (response,) = out["responses"]
        assert response["raised"] == "ImproperlyConfigured"
        assert "AuthenticationMiddleware" in response["message"]
        assert "before it in settings.MIDDLEWARE" in response["message"]

    def test_the_session_key_without_sessions_is_an_error(self, emulator: TrackAPIEmulator) -> None:
        out = run_site(
            [{"path": "/signup/", "user": 42}],
            emulator=emulator,
            anonymous_key="cio_anonymous_id",
            middleware=["__main__.header_user", MIDDLEWARE],
        )
        (response,) = out["responses"]
        assert response["raised"] == "ImproperlyConfigured"
        assert "SessionMiddleware" in response["message"]

    def test_a_session_key_setting_that_is_not_text_is_an_error(
        self, emulator: TrackAPIEmulator
    ) -> None:
        out = run_site([{"path": "/signup/", "user": 42}], emulator=emulator, anonymous_key=7)
        (response,) = out["responses"]
        assert response["raised"] == "ImproperlyConfigured"
        message = response["message"]
        assert "CUSTOMERIO_ANONYMOUS_ID_SESSION_KEY must be the name of a session key" in message


class TestInstalledApp:
    def test_settings_customerio_configures_the_bridge(self, emulator: TrackAPIEmulator) -> None:
        customerio = {
            "site_id": emulator.site_id,
            "api_key": emulator.api_key,
            "track_url": emulator.url,
            "flush_interval": 0.05,
            "spool_path": False,
            "events": ["__main__.SignedUp"],  # a dotted path, imported at startup
            "unknown_events": "reject",
        }
        out = run_site([{"path": "/signup/?plan=pro", "user": 42}], customerio=customerio)
        assert out["settings"]["site_id"] == emulator.site_id
        assert out["settings"]["events"] == ["signed_up"]
        assert out["settings"]["unknown_events"] == "reject"
        assert sent(emulator) == [("signed_up", {"id": "42"}, {"plan": "pro"})]

    def test_without_the_setting_the_environment_configures_it(
        self, emulator: TrackAPIEmulator
    ) -> None:
        out = run_site(
            [{"path": "/signup/", "user": 42}],
            emulator=emulator,
            env={"CUSTOMERIO_SPOOL_PATH": "off"},
            quick=False,
        )
        assert out["settings"]["track_url"] == emulator.url
        assert out["settings"]["flush_interval"] == 1.0  # the default: nothing but env
        assert sent(emulator) == [("signed_up", {"id": "42"}, {"plan": "free"})]

    def test_the_setting_and_the_environment_combine(self, emulator: TrackAPIEmulator) -> None:
        out = run_site(emulator=emulator, customerio={"flush_interval": 0.2, "spool_path": False})
        assert out["settings"]["site_id"] == emulator.site_id  # from the environment
        assert out["settings"]["flush_interval"] == 0.2  # from the setting

    @pytest.mark.parametrize(
        ("env", "site"),
        [({"CUSTOMERIO_ENABLED": "0"}, {}), ({}, {"customerio": {"enabled": False}})],
        ids=["CUSTOMERIO_ENABLED=0", "enabled-False"],
    )
    def test_switched_off_it_starts_without_credentials(
        self, env: dict[str, str], site: dict[str, Any]
    ) -> None:
        out = run_site(env=env, **site)
        assert "setup_error" not in out
        assert out["settings"]["enabled"] is False

    def test_missing_credentials_stop_startup_saying_what_to_set(self) -> None:
        out = run_site()
        error = out["setup_error"]
        assert "site_id is not set" in error
        assert "settings.CUSTOMERIO['site_id']" in error
        assert "CUSTOMERIO_ENABLED=0" in error

    def test_a_malformed_key_is_not_quoted(self) -> None:
        out = run_site(customerio={"site_id": "s", "api_key": "sk-secret\n"})
        assert "settings.CUSTOMERIO['api_key']" in out["setup_error"]
        assert "sk-secret" not in out["setup_error"]

    def test_the_setting_must_be_a_dict(self) -> None:
        out = run_site(customerio=["site_id", "s"])
        assert "settings.CUSTOMERIO must be a dict" in out["setup_error"]

    def test_events_given_as_one_string_is_named_with_the_fix(self) -> None:
        out = run_site(customerio={"enabled": False, "events": "__main__.SignedUp"})
        error = out["setup_error"]
        assert "settings.CUSTOMERIO['events'] must be a list of dotted paths" in error
        assert "got str: write ['__main__.SignedUp']" in error

    def test_events_given_as_a_set_are_imported(self) -> None:
        # A set cannot travel to the child as JSON; reading the setting needs no Django set-up.
        from customerio_logging.integrations.django.apps import _options

        options = _options({"events": {f"{__name__}.Declared", Declared}})
        assert options["events"] == [Declared, Declared]

    @pytest.mark.parametrize(
        ("customerio", "where"),
        [
            ({"events": ["__main__.SignedUp", "shop.nowhere.Event"]}, "['events'][1]"),
            ({"on_error": "shop.nowhere.report"}, "['on_error']"),
        ],
    )
    def test_a_dotted_path_that_cannot_be_imported_is_named(
        self, customerio: dict[str, Any], where: str
    ) -> None:
        out = run_site(customerio={"enabled": False, **customerio})
        assert f"settings.CUSTOMERIO{where}: cannot import" in out["setup_error"]


def test_importing_the_library_does_not_import_django() -> None:
    result = run_python(
        "-c",
        "import sys, customerio_logging, customerio_logging.integrations; "
        "print('django' in sys.modules)",
        check=True,
    )
    assert result.stdout.strip() == "False"
