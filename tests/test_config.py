"""Settings: precedence, validation, and keeping the API key out of every message."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest

from customerio_logging._config import (
    APP_REGION_URLS,
    DEFAULT_MAX_SPOOL_BYTES,
    ENV_VARS,
    REGION_URLS,
    Settings,
    is_loopback,
)
from customerio_logging._schema import Event
from customerio_logging.exceptions import ConfigurationError, CustomerIOLoggingError

SECRET = "sk_live_SECRET123"
US = "https://track.customer.io"
EU = "https://track-eu.customer.io"


def make(environ: dict[str, str] | None = None, **kwargs: Any) -> Settings:
    """Settings from an explicit environment (never os.environ) with valid credentials."""
    kwargs.setdefault("site_id", "site-1")
    kwargs.setdefault("api_key", SECRET)
    return Settings.from_env(environ={} if environ is None else environ, **kwargs)


def config_error(environ: dict[str, str] | None = None, **kwargs: Any) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(environ={} if environ is None else environ, **kwargs)
    return info.value


def assert_names(error: ConfigurationError, setting: str, env_var: str) -> None:
    """The error names what to change: the keyword and the environment variable."""
    assert error.setting == setting
    assert error.env_var == env_var
    assert setting in str(error)
    assert env_var in str(error)


class TestEnvVars:
    def test_the_documented_names(self) -> None:
        assert dict(ENV_VARS) == {
            "site_id": "CUSTOMERIO_SITE_ID",
            "api_key": "CUSTOMERIO_TRACK_API_KEY",
            "region": "CUSTOMERIO_REGION",
            "track_url": "CUSTOMERIO_TRACK_URL",
            "spool_path": "CUSTOMERIO_SPOOL_PATH",
            "app_api_key": "CUSTOMERIO_APP_API_KEY",
            "app_url": "CUSTOMERIO_APP_URL",
            "enabled": "CUSTOMERIO_ENABLED",
            "redis_url": "CUSTOMERIO_REDIS_URL",
        }

    def test_the_documented_hosts(self) -> None:
        assert dict(REGION_URLS) == {"us": US, "eu": EU}
        assert dict(APP_REGION_URLS) == {
            "us": "https://api.customer.io",
            "eu": "https://api-eu.customer.io",
        }


class TestPrecedence:
    ENV: ClassVar[dict[str, str]] = {
        "CUSTOMERIO_SITE_ID": "env-site",
        "CUSTOMERIO_TRACK_API_KEY": "env-key",
        "CUSTOMERIO_REGION": "eu",
        "CUSTOMERIO_TRACK_URL": "https://env.example.com",
        "CUSTOMERIO_SPOOL_PATH": "/var/lib/app/env-spool.sqlite3",
        "CUSTOMERIO_APP_API_KEY": "env-app-key",
        "CUSTOMERIO_APP_URL": "https://env-app.example.com",
        "CUSTOMERIO_REDIS_URL": "redis://env-redis:6379/0",
    }

    def test_defaults(self) -> None:
        settings = Settings.from_env(environ={}, site_id="s", api_key="k")
        assert settings.region == "us"
        assert settings.track_url == US
        assert settings.batch_size == 500
        assert settings.flush_interval == 1.0
        assert settings.max_queue_size == 10_000
        assert settings.shutdown_timeout == 5.0
        assert settings.unknown_events == "allow"
        assert settings.events == ()
        assert settings.spool_path is None

    def test_env_fills_everything(self) -> None:
        settings = Settings.from_env(environ=self.ENV)
        assert settings.site_id == "env-site"
        assert settings.api_key == "env-key"
        assert settings.region == "eu"
        assert settings.track_url == "https://env.example.com"

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("site_id", "kw-site"),
            ("api_key", "kw-key"),
            ("region", "us"),
            ("track_url", "https://kw.example.com"),
            ("app_api_key", "kw-app-key"),
            ("app_url", "https://kw-app.example.com"),
            ("redis_url", "redis://kw-redis:6379/1"),
        ],
    )
    def test_kwargs_beat_env(self, name: str, value: str) -> None:
        settings = Settings.from_env(environ=self.ENV, **{name: value})
        assert getattr(settings, name) == value
        # A region passed explicitly picks its own hosts over the environment's URLs.
        hosts = {"track_url", "app_url"} if name == "region" else {"track_url"}
        # CUSTOMERIO_ENABLED is a switch, not a text setting: see TestEnabled.
        for other in set(ENV_VARS) - {name, "region", "enabled"} - hosts:
            assert getattr(settings, other) == self.ENV[ENV_VARS[other]]

    @pytest.mark.parametrize("name", sorted(set(ENV_VARS) - {"enabled"}))
    def test_none_kwarg_means_not_given(self, name: str) -> None:
        settings = Settings.from_env(environ=self.ENV, **{name: None})
        assert getattr(settings, name) == self.ENV[ENV_VARS[name]]

    @pytest.mark.parametrize("blank", ["", "   ", "\t"])
    def test_blank_env_values_are_ignored(self, blank: str) -> None:
        env = {"CUSTOMERIO_REGION": blank, "CUSTOMERIO_TRACK_URL": blank}
        settings = make(env)
        assert settings.region == "us"
        assert settings.track_url == US

    def test_env_values_are_stripped(self) -> None:
        env = {
            "CUSTOMERIO_SITE_ID": " site \n",
            "CUSTOMERIO_TRACK_API_KEY": f"  {SECRET}\n",
            "CUSTOMERIO_REGION": " EU ",
        }
        settings = Settings.from_env(environ=env)
        assert settings.site_id == "site"
        assert settings.api_key == SECRET
        assert settings.track_url == EU

    def test_reads_os_environ_by_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CUSTOMERIO_SITE_ID", "os-site")
        monkeypatch.setenv("CUSTOMERIO_TRACK_API_KEY", "os-key")
        monkeypatch.setenv("CUSTOMERIO_REGION", "eu")
        settings = Settings.from_env()
        assert (settings.site_id, settings.api_key, settings.track_url) == (
            "os-site",
            "os-key",
            EU,
        )

    def test_explicit_environ_ignores_os_environ(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CUSTOMERIO_SITE_ID", "os-site")
        monkeypatch.setenv("CUSTOMERIO_TRACK_API_KEY", "os-key")
        error = config_error({})
        assert error.setting == "site_id"

    def test_kwarg_track_url_beats_env_region(self) -> None:
        settings = make({"CUSTOMERIO_REGION": "eu"}, track_url="http://127.0.0.1:9000")
        assert settings.region == "eu"
        assert settings.track_url == "http://127.0.0.1:9000"

    def test_kwarg_region_beats_env_track_url(self) -> None:
        # Explicit arguments win over the environment: region="eu" picks the EU host
        # even when the environment names another URL.
        settings = make({"CUSTOMERIO_TRACK_URL": "https://proxy.example.com"}, region="eu")
        assert settings.track_url == "https://track-eu.customer.io"

    def test_kwarg_track_url_beats_kwarg_region_default_host(self) -> None:
        settings = make(region="eu", track_url="https://proxy.example.com")
        assert settings.track_url == "https://proxy.example.com"

    def test_a_region_host_as_track_url_sets_the_region(self) -> None:
        settings = make({"CUSTOMERIO_TRACK_URL": "https://track-eu.customer.io/"})
        assert (settings.region, settings.track_url) == ("eu", "https://track-eu.customer.io")

    def test_a_region_contradicting_its_host_is_refused(self) -> None:
        with pytest.raises(ConfigurationError, match="'us' region's host but region is 'eu'"):
            make(region="eu", track_url="https://track.customer.io")

    def test_events_become_a_tuple(self) -> None:
        class Signup(Event, name="config_signup"):
            pass

        assert make(events=[Signup]).events == (Signup,)
        assert make(events={Signup}).events == (Signup,)


class TestRegion:
    @pytest.mark.parametrize(
        ("region", "url"),
        [
            ("us", US),
            ("eu", EU),
            ("US", US),
            ("EU", EU),
            ("Eu", EU),
            (" eu ", EU),
        ],
    )
    def test_region_picks_the_host(self, region: str, url: str) -> None:
        settings = make(region=region)
        assert settings.region == region.strip().lower()
        assert settings.track_url == url

    @pytest.mark.parametrize("region", ["EU", "eu", "Us"])
    def test_region_from_env_is_case_insensitive(self, region: str) -> None:
        settings = make({"CUSTOMERIO_REGION": region})
        assert settings.track_url == REGION_URLS[region.lower()]

    @pytest.mark.parametrize("region", ["ap", "usa", "", "europe", 1, "us-east-1"])
    def test_unknown_region(self, region: object) -> None:
        error = config_error(site_id="s", api_key=SECRET, region=region)
        assert_names(error, "region", "CUSTOMERIO_REGION")
        assert SECRET not in str(error)

    def test_unknown_region_from_env(self) -> None:
        error = config_error({"CUSTOMERIO_REGION": "mars"}, site_id="s", api_key="k")
        assert error.setting == "region"
        assert "CUSTOMERIO_REGION" in str(error)


class TestTrackUrl:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("https://track.customer.io", US),
            ("https://track.customer.io/", US),
            ("https://proxy.example.com:8443", "https://proxy.example.com:8443"),
            ("  https://proxy.example.com/  ", "https://proxy.example.com"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://127.0.0.1", "http://127.0.0.1"),
            ("http://localhost:8080", "http://localhost:8080"),
            ("http://LOCALHOST:8080", "http://LOCALHOST:8080"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("HTTPS://track.customer.io", "HTTPS://track.customer.io"),
        ],
    )
    def test_accepted(self, url: str, expected: str) -> None:
        assert make(track_url=url).track_url == expected

    @pytest.mark.parametrize(
        "url",
        [
            "http://track.customer.io",
            "http://example.com:8080",
            "http://10.0.0.1:8080",
            "http://192.168.1.10",
            "http://localhost.example.com",
            "http://[2001:db8::1]:8080",
            "http://0.0.0.0:8080",
        ],
    )
    def test_http_only_for_loopback(self, url: str) -> None:
        error = config_error(site_id="s", api_key=SECRET, track_url=url)
        assert_names(error, "track_url", "CUSTOMERIO_TRACK_URL")
        assert "http://" in str(error)

    @pytest.mark.parametrize(
        "url",
        [
            "track.customer.io",
            "ftp://track.customer.io",
            "https://",
            "https:///path",
            "file:///etc/passwd",
            "//track.customer.io",
            "https://track.customer.io:notaport",
            "https://track.customer.io:99999",
            "https://track.customer.io/?q=1",
            "https://track.customer.io/#frag",
            "https://[...",
            "https://[::1",
            "http://[127.0.0.1]:8080",
            "https://track.customer.io\uff0f@evil.example",
            123,
            b"https://track.customer.io",
        ],
    )
    def test_malformed(self, url: object) -> None:
        error = config_error(site_id="s", api_key=SECRET, track_url=url)
        assert_names(error, "track_url", "CUSTOMERIO_TRACK_URL")

    def test_malformed_from_env(self) -> None:
        error = config_error(
            {"CUSTOMERIO_TRACK_URL": "http://example.com"}, site_id="s", api_key="k"
        )
        assert error.setting == "track_url"
        assert "CUSTOMERIO_TRACK_URL" in str(error)

    @pytest.mark.parametrize(
        "url",
        [
            f"https://site-1:{SECRET}@track.customer.io",
            f"https://{SECRET}@track.customer.io",
            f"https://:{SECRET}@track.customer.io",
            f"http://site-1:{SECRET}@127.0.0.1:8080",
            f"http://site-1:{SECRET}@example.com",
            f"ftp://site-1:{SECRET}@track.customer.io",
            f"https://{SECRET}@",
            f"site-1:{SECRET}@track.customer.io",
            f"https://track.customer.io:{SECRET}",
            f"https://track.customer.io/?api_key={SECRET}",
            f"https://track.customer.io/#{SECRET}",
            f"{SECRET}",
        ],
    )
    def test_credentials_in_the_url_are_never_echoed(self, url: str) -> None:
        for error in (
            config_error(site_id="s", api_key="k", track_url=url),
            config_error({"CUSTOMERIO_TRACK_URL": url}, site_id="s", api_key="k"),
        ):
            assert error.setting == "track_url"
            assert error.env_var == "CUSTOMERIO_TRACK_URL"
            assert SECRET not in str(error)
            assert SECRET not in repr(error)
            assert all(SECRET not in str(arg) for arg in error.args)


class TestCredentials:
    @pytest.mark.parametrize("name", ["site_id", "api_key"])
    def test_missing(self, name: str) -> None:
        given = {"site_id": "s", "api_key": SECRET}
        del given[name]
        error = config_error(**given)
        assert_names(error, name, ENV_VARS[name])

    @pytest.mark.parametrize("name", ["site_id", "api_key"])
    @pytest.mark.parametrize(
        "bad",
        ["", "   ", " padded", "padded ", "line\nbreak", "cr\rhere", "nul\x00here", 123, b"bytes"],
    )
    def test_malformed(self, name: str, bad: object) -> None:
        given: dict[str, object] = {"site_id": "s", "api_key": "k", name: bad}
        error = config_error(**given)
        assert_names(error, name, ENV_VARS[name])

    @pytest.mark.parametrize("name", ["site_id", "api_key"])
    @pytest.mark.parametrize("bad", ["sk\u2019live", "\u0441ite", "key\u2014one", "k\U0001f511"])
    def test_outside_latin1_is_refused(self, name: str, bad: str) -> None:
        # HTTP basic auth sends both as Latin-1: such a value would fail every request.
        for error in (
            config_error(**{"site_id": "s", "api_key": "k", name: bad}),
            config_error({ENV_VARS[name]: bad}, **{"site_id": "s", "api_key": "k", name: None}),
        ):
            assert error.setting == name
            assert "Latin-1" in str(error)
            assert ENV_VARS[name] in str(error)
            assert bad not in str(error)

    @pytest.mark.parametrize("name", ["site_id", "api_key"])
    def test_latin1_beyond_ascii_is_accepted(self, name: str) -> None:
        assert getattr(make(**{name: "caf\u00e9-\u00df"}), name) == "caf\u00e9-\u00df"

    def test_both_missing_names_site_id_first(self) -> None:
        assert config_error().setting == "site_id"

    def test_site_id_may_be_numeric_text(self) -> None:
        assert make(site_id="123456").site_id == "123456"


class TestNumbers:
    @pytest.mark.parametrize("value", [1, 2, 500, 1000])
    def test_batch_size_in_bounds(self, value: int) -> None:
        assert make(batch_size=value).batch_size == value

    @pytest.mark.parametrize("value", [0, -1, 1001, 10_000])
    def test_batch_size_out_of_bounds(self, value: int) -> None:
        error = config_error(site_id="s", api_key="k", batch_size=value)
        assert error.setting == "batch_size"
        assert "batch_size" in str(error)
        assert "between 1 and 1000" in str(error)

    @pytest.mark.parametrize("name", ["batch_size", "max_queue_size", "max_retries"])
    @pytest.mark.parametrize("value", [1.5, "10", True, False, 10.0])
    def test_integers_must_be_int(self, name: str, value: object) -> None:
        error = config_error(site_id="s", api_key="k", **{name: value})
        assert error.setting == name
        assert f"{name} must be an integer" in str(error)

    def test_batch_size_must_not_exceed_queue(self) -> None:
        error = config_error(site_id="s", api_key="k", batch_size=200, max_queue_size=100)
        assert error.setting == "batch_size"
        assert "batch_size must be <= max_queue_size" in str(error)

    def test_batch_size_equal_to_queue_is_fine(self) -> None:
        settings = make(batch_size=100, max_queue_size=100)
        assert (settings.batch_size, settings.max_queue_size) == (100, 100)

    def test_small_queue_with_default_batch_size_is_refused(self) -> None:
        error = config_error(site_id="s", api_key="k", max_queue_size=10)
        assert "batch_size must be <= max_queue_size" in str(error)

    @pytest.mark.parametrize("value", [0, -5])
    def test_max_queue_size_positive(self, value: int) -> None:
        assert config_error(site_id="s", api_key="k", max_queue_size=value).setting == (
            "max_queue_size"
        )

    def test_max_retries_may_be_zero(self) -> None:
        assert make(max_retries=0).max_retries == 0
        assert config_error(site_id="s", api_key="k", max_retries=-1).setting == "max_retries"

    @pytest.mark.parametrize("name", ["flush_interval", "shutdown_timeout", "request_timeout"])
    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "1.0", True, [1]])
    def test_intervals_must_be_finite_numbers(self, name: str, value: object) -> None:
        error = config_error(site_id="s", api_key="k", **{name: value})
        assert error.setting == name
        assert name in str(error)
        assert "finite" in str(error)

    @pytest.mark.parametrize("name", ["flush_interval", "shutdown_timeout", "request_timeout"])
    @pytest.mark.parametrize("value", [-1, -0.001])
    def test_intervals_must_not_be_negative(self, name: str, value: float) -> None:
        error = config_error(site_id="s", api_key="k", **{name: value})
        assert error.setting == name
        assert name in str(error)

    @pytest.mark.parametrize(
        ("name", "zero_ok"),
        [("flush_interval", False), ("request_timeout", False), ("shutdown_timeout", True)],
    )
    def test_zero_seconds(self, name: str, zero_ok: bool) -> None:
        if zero_ok:
            assert getattr(make(**{name: 0}), name) == 0
        else:
            assert config_error(site_id="s", api_key="k", **{name: 0}).setting == name

    @pytest.mark.parametrize("value", [0.01, 1, 2.5, 3600])
    def test_intervals_accept_positive_numbers(self, value: float) -> None:
        assert make(flush_interval=value).flush_interval == value

    TIMES: ClassVar[list[str]] = [
        "flush_interval",
        "shutdown_timeout",
        "request_timeout",
        "retry_base_delay",
        "retry_max_delay",
        "retry_budget",
        "max_retry_after",
    ]

    # Either delay may then take any value in range without contradicting the other.
    DELAYS_APART: ClassVar[dict[str, float]] = {"retry_base_delay": 0.01, "retry_max_delay": 3600}

    @pytest.mark.parametrize("name", TIMES)
    @pytest.mark.parametrize("value", [1e-6, 0.009, 3600.5, 1e10, 1e300])
    def test_times_out_of_range_are_refused_with_the_range(self, name: str, value: float) -> None:
        # 1e-6 s: a busy loop; 1e10 s: beyond threading.TIMEOUT_MAX, a wait would raise.
        given = {**self.DELAYS_APART, name: value}
        error = config_error(site_id="s", api_key="k", **given)
        assert error.setting == name
        assert "between 0.01 and 3600 seconds" in str(error)
        assert f"configure({name}=...)" in str(error)

    @pytest.mark.parametrize("name", TIMES)
    @pytest.mark.parametrize("value", [0.01, 3600])
    def test_times_at_the_bounds_are_accepted(self, name: str, value: float) -> None:
        assert getattr(make(**{**self.DELAYS_APART, name: value}), name) == value

    @pytest.mark.parametrize("value", [1e-6, 0.05, 0.0999])
    def test_a_request_rate_below_one_every_ten_seconds_is_refused(self, value: float) -> None:
        # 1e-6 requests per second: an 11-day wait before the second request.
        error = config_error(site_id="s", api_key="k", max_requests_per_second=value)
        assert error.setting == "max_requests_per_second"
        assert "at least 0.1 requests per second" in str(error)

    @pytest.mark.parametrize("value", [0.1, 1, 100, 1e6])
    def test_request_rates_from_one_every_ten_seconds_are_accepted(self, value: float) -> None:
        assert make(max_requests_per_second=value).max_requests_per_second == value


class TestOtherSettings:
    @pytest.mark.parametrize("value", ["allow", "warn", "reject"])
    def test_unknown_events_values(self, value: str) -> None:
        assert make(unknown_events=value).unknown_events == value

    @pytest.mark.parametrize("value", ["ignore", "ALLOW", "", "drop", 1])
    def test_unknown_events_rejects_others(self, value: object) -> None:
        error = config_error(site_id="s", api_key="k", unknown_events=value)
        assert error.setting == "unknown_events"
        assert "unknown_events" in str(error)
        assert "allow, warn, reject" in str(error)

    @pytest.mark.parametrize(
        ("given", "first"),
        [
            ({"batchsize": 10}, "batchsize"),
            ({"apikey": "x"}, "apikey"),
            ({"zeta": 1, "alpha": 2}, "alpha"),
        ],
    )
    def test_unknown_setting_names(self, given: dict[str, object], first: str) -> None:
        error = config_error(site_id="s", api_key=SECRET, **given)
        assert error.setting == first
        for name in given:
            assert name in str(error)
        assert "batch_size" in str(error)  # the known settings are listed
        assert SECRET not in str(error)

    def test_spool_path_false_disables(self) -> None:
        assert make(spool_path=False).spool_path is False


class TestSpoolSettings:
    def test_by_default_the_spool_is_on_in_the_state_directory_and_spills(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
        settings = make()
        assert settings.spool_path is None
        assert settings.spool_file is not None
        assert settings.spool_file.parent == tmp_path / "customerio-logging"
        assert (settings.on_full, settings.durability) == ("spill", "memory")
        assert settings.max_spool_bytes == 100 * 1024 * 1024

    def test_each_workspace_gets_its_own_default_file(self) -> None:
        assert make(site_id="a").spool_file != make(site_id="b").spool_file

    @pytest.mark.parametrize("off", [False, "off", "false", "OFF", "none", "0"])
    def test_the_spool_can_be_turned_off(self, off: object) -> None:
        settings = make(spool_path=off)
        assert (settings.spool_path, settings.spool_file, settings.on_full) == (False, None, "drop")

    def test_off_from_the_environment(self) -> None:
        settings = Settings.from_env(
            environ={"CUSTOMERIO_SPOOL_PATH": "off"}, site_id="s", api_key=SECRET
        )
        assert settings.spool_file is None

    def test_a_path_is_expanded(self) -> None:
        settings = make(spool_path="~/spool.sqlite3")
        assert settings.spool_file == Path.home() / "spool.sqlite3"

    @pytest.mark.parametrize(
        ("given", "setting", "words"),
        [
            ({"spool_path": False, "on_full": "spill"}, "on_full", "needs the spool"),
            ({"spool_path": False, "durability": "disk"}, "durability", "needs the spool"),
            ({"durability": "disk", "on_full": "drop"}, "on_full", "must be 'spill'"),
            ({"durability": "fsync"}, "durability", "'memory' or 'disk'"),
            ({"on_full": "block"}, "on_full", "'drop' or 'spill'"),
            ({"max_spool_bytes": 1000}, "max_spool_bytes", ">= 1048576"),
            ({"spool_path": "  "}, "spool_path", "file path"),
            ({"spool_path": 3}, "spool_path", "file path"),
        ],
    )
    def test_contradictions_are_refused_with_what_to_change(
        self, given: dict[str, object], setting: str, words: str
    ) -> None:
        error = config_error(site_id="s", api_key=SECRET, **given)
        assert error.setting == setting
        assert words in str(error)


class TestSharedDefaults:
    def test_the_default_spool_bound_is_the_settings_default(self) -> None:
        # The command line opens a spool named by path alone with this bound.
        assert make().max_spool_bytes == DEFAULT_MAX_SPOOL_BYTES == 100 * 1024 * 1024


class TestIsLoopback:
    @pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1"])
    def test_loopback(self, host: str) -> None:
        assert is_loopback(host)

    @pytest.mark.parametrize(
        "host",
        [
            "",
            "0.0.0.0",
            "10.0.0.1",
            "::",
            "2001:db8::1",
            "localhost.example.com",
            "track.customer.io",
        ],
    )
    def test_not_loopback(self, host: str) -> None:
        assert not is_loopback(host)


class TestSettingsObject:
    def test_frozen(self) -> None:
        settings = make()
        with pytest.raises(dataclasses.FrozenInstanceError):
            settings.batch_size = 1  # type: ignore[misc]

    def test_keyword_only(self) -> None:
        with pytest.raises(TypeError):
            Settings("s", "k")  # type: ignore[misc]

    def test_direct_construction_validates(self) -> None:
        with pytest.raises(ConfigurationError):
            Settings(site_id="s", api_key="k", flush_interval=-1)

    def test_error_is_a_value_error(self) -> None:
        error = config_error()
        assert isinstance(error, ValueError)
        assert isinstance(error, CustomerIOLoggingError)

    def test_equal_settings_compare_equal(self) -> None:
        assert make() == make()


# Every bad input below is paired with a valid-looking API key; none of the messages may
# repeat it.
BAD_INPUTS: list[tuple[dict[str, str], dict[str, Any]]] = [
    ({}, {"api_key": f" {SECRET}"}),
    ({}, {"api_key": f"{SECRET} "}),
    ({}, {"api_key": f"{SECRET}\n"}),
    ({}, {"api_key": f"{SECRET}\r\n"}),
    ({}, {"api_key": f"{SECRET}\x00"}),
    ({}, {"api_key": f"Bearer\n{SECRET}"}),
    ({}, {"api_key": SECRET.encode()}),
    ({}, {"api_key": SECRET, "site_id": ""}),
    ({}, {"api_key": SECRET, "site_id": " s"}),
    ({}, {"api_key": SECRET, "region": "mars"}),
    ({}, {"api_key": SECRET, "track_url": "http://example.com"}),
    ({}, {"api_key": SECRET, "track_url": "nota url"}),
    ({}, {"api_key": SECRET, "track_url": f"https://s:{SECRET}@track.customer.io"}),
    ({}, {"api_key": SECRET, "batch_size": 0}),
    ({}, {"api_key": SECRET, "batch_size": 100, "max_queue_size": 10}),
    ({}, {"api_key": SECRET, "flush_interval": math.nan}),
    ({}, {"api_key": SECRET, "shutdown_timeout": -1}),
    ({}, {"api_key": SECRET, "max_retries": -1}),
    ({}, {"api_key": SECRET, "unknown_events": "maybe"}),
    ({}, {"api_key": SECRET, "nonsense": 1}),
    ({"CUSTOMERIO_TRACK_API_KEY": SECRET}, {"site_id": None}),
    ({"CUSTOMERIO_TRACK_API_KEY": SECRET, "CUSTOMERIO_REGION": "xx"}, {}),
    ({"CUSTOMERIO_TRACK_API_KEY": SECRET, "CUSTOMERIO_TRACK_URL": "http://evil.com"}, {}),
    ({"CUSTOMERIO_TRACK_API_KEY": f"x\x00{SECRET}"}, {}),
    ({"CUSTOMERIO_TRACK_API_KEY": SECRET}, {"batch_size": 5000}),
    ({}, {"api_key": f"{SECRET}\u2019"}),
    ({"CUSTOMERIO_TRACK_API_KEY": f"\u2014{SECRET}"}, {}),
    ({"CUSTOMERIO_TRACK_API_KEY": SECRET, "CUSTOMERIO_TRACK_URL": f"https://[{SECRET}"}, {}),
    ({}, {"api_key": SECRET, "track_url": f"https://{SECRET}\uff0f@evil.example"}),
    ({}, {"api_key": SECRET, "flush_interval": 1e-6}),
]


class TestSecretNeverShown:
    def test_not_in_repr_or_str(self) -> None:
        settings = make()
        assert SECRET not in repr(settings)
        assert SECRET not in str(settings)
        assert "site-1" in repr(settings)  # the repr is still useful

    def test_not_in_repr_with_a_transport(self) -> None:
        settings = make(transport=lambda body: None)
        assert SECRET not in repr(settings)

    @pytest.mark.parametrize(("environ", "kwargs"), BAD_INPUTS)
    def test_not_in_any_configuration_error(
        self, environ: dict[str, str], kwargs: dict[str, Any]
    ) -> None:
        given = {"site_id": "site-1", **kwargs}
        with pytest.raises(ConfigurationError) as info:
            Settings.from_env(environ=environ, **given)
        error = info.value
        assert error.setting is not None
        for text in (str(error), repr(error), *map(str, error.args)):
            assert SECRET not in text
        assert SECRET not in str(error.setting)
        assert SECRET not in str(error.env_var)

    @pytest.mark.parametrize(("environ", "kwargs"), BAD_INPUTS)
    def test_not_in_the_traceback_chain(
        self, environ: dict[str, str], kwargs: dict[str, Any]
    ) -> None:
        with pytest.raises(ConfigurationError) as info:
            Settings.from_env(environ=environ, **{"site_id": "site-1", **kwargs})
        # What a traceback would print: the cause, and the context unless suppressed.
        error: BaseException | None = info.value
        while error is not None:
            assert SECRET not in str(error)
            error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)


class TestEnabled:
    @pytest.mark.parametrize("word", ["0", "false", "No", " off "])
    def test_the_environment_switches_it_off_and_needs_no_credentials(self, word: str) -> None:
        settings = Settings.from_env(environ={"CUSTOMERIO_ENABLED": word})
        assert settings.enabled is False
        assert settings.site_id == ""
        assert settings.spool_file is None  # nothing is ever written

    @pytest.mark.parametrize("word", ["1", "true", "YES", "on"])
    def test_on_still_needs_credentials(self, word: str) -> None:
        with pytest.raises(ConfigurationError, match="CUSTOMERIO_SITE_ID"):
            Settings.from_env(environ={"CUSTOMERIO_ENABLED": word})

    def test_an_unknown_word_is_a_clear_error(self) -> None:
        with pytest.raises(ConfigurationError, match="CUSTOMERIO_ENABLED must be 1 or 0"):
            Settings.from_env(environ={"CUSTOMERIO_ENABLED": "maybe"})

    def test_the_keyword_beats_the_environment(self) -> None:
        settings = Settings.from_env(environ={"CUSTOMERIO_ENABLED": "1"}, enabled=False)
        assert settings.enabled is False

    def test_off_still_checks_the_other_settings(self) -> None:
        # A typo in CI's configuration is found in CI, not in production.
        with pytest.raises(ConfigurationError, match="batch_size"):
            Settings(enabled=False, batch_size=0)
        with pytest.raises(ConfigurationError, match="api_key"):
            Settings(enabled=False, api_key="with\nnewline")

    def test_off_turns_the_spool_off_whatever_was_asked(self, tmp_path: Path) -> None:
        settings = Settings(enabled=False, spool_path=tmp_path / "s.db", durability="disk")
        assert settings.spool_file is None
        assert settings.durability == "memory"

    def test_on_error_must_be_callable(self) -> None:
        with pytest.raises(ConfigurationError, match="on_error"):
            Settings(site_id="s", api_key="k", on_error="print")  # type: ignore[arg-type]


class TestRedisUrl:
    def test_off_unless_given(self) -> None:
        assert Settings.from_env(environ={}, site_id="s", api_key="k").redis_url is None

    def test_from_the_environment_and_never_in_the_repr(self) -> None:
        url = "redis://:hunter2@cache.internal:6380/3"
        settings = Settings.from_env(
            environ={"CUSTOMERIO_REDIS_URL": f" {url} "}, site_id="s", api_key="k"
        )
        assert settings.redis_url == url
        assert "hunter2" not in repr(settings)
        assert "cache.internal" not in repr(settings)

    @pytest.mark.parametrize(
        "url", ["http://:hunter2@host:6379", "redis://:hunter2@host:port", "hunter2", "redis://"]
    )
    def test_a_malformed_url_is_named_but_never_echoed(self, url: str) -> None:
        error = config_error(site_id="s", api_key="k", redis_url=url)
        assert_names(error, "redis_url", "CUSTOMERIO_REDIS_URL")
        assert "hunter2" not in str(error)

    @pytest.mark.parametrize(
        "query",
        [
            "socket_timeout=30",  # a log call's 50 ms wait for Redis would become 30 s
            "socket_connect_timeout=30",
            "retry_on_timeout=yes",
            "db=first",  # redis-py cannot read it: it raised ValueError at configure
            "health_check_interval=often",
            "colour=blue",  # redis-py refuses it at the first call (TypeError)
        ],
    )
    def test_a_query_option_that_redis_py_refuses_or_that_unbounds_a_wait_is_refused(
        self, query: str
    ) -> None:
        error = config_error(
            site_id="s", api_key="k", redis_url=f"redis://:hunter2@cache:6380/0?{query}"
        )
        assert_names(error, "redis_url", "CUSTOMERIO_REDIS_URL")
        assert query.split("=")[0] in str(error)
        assert "hunter2" not in str(error)

    @pytest.mark.parametrize(
        "url",
        [
            "redis://:hunter2@cache:6380/0?db=2",
            "rediss://cache:6380/0?ssl_cert_reqs=none",
            "unix:///run/redis.sock?db=1",
        ],
    )
    def test_the_url_s_own_parts_may_be_in_its_query(self, url: str) -> None:
        assert Settings(site_id="s", api_key="k", redis_url=url).redis_url == url

    def test_switched_off_needs_no_redis(self) -> None:
        settings = Settings.from_env(environ={}, enabled=False, redis_url="redis://127.0.0.1:1")
        assert settings.redis_url is None

    def test_the_location_shown_has_no_credentials(self) -> None:
        from customerio_logging._redis_url import redis_location

        assert redis_location("redis://user:hunter2@cache:6380/2") == "redis://cache:6380/2"
        assert redis_location("rediss://:pw@[::1]") == "rediss://[::1]:6379/0"
        assert redis_location("unix:///run/redis.sock") == "unix:///run/redis.sock"
