"""A tools module that fails to import (for the one-line error test)."""

import voxbus_no_such_module  # type: ignore[import-not-found]  # noqa: F401
