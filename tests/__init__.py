"""The test suite. Its shared helpers get pytest's assertion messages, as tests do."""

import pytest

pytest.register_assert_rewrite("tests.helpers")
