"""What the API's paths and lists are made of, without FastAPI: the prefix, the rule for a
name and the largest page. The daemon's first answers (:mod:`corral.api.front`) need them
before FastAPI is loaded; the routes take them from here too."""

from __future__ import annotations

from corral.domain.complaints import NAME_PATTERN as NAME_PATTERN

API = "/v1"
MAX_PAGE = 1000  # items per answer of a list at most
