"""Shared field types. Text never carries NUL (PostgreSQL text cannot hold it)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
Text = Annotated[str, Field(max_length=2000, pattern=r"^[^\x00]*$")]
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
