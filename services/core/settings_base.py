"""The building blocks of every config section: strict models and secret references."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, model_validator

from services.core.logs import remember_secret

REFERENCE_HINT: Final = (
    "must name where the secret is kept, as {env: VARIABLE} or {file: PATH}; "
    "the secret itself never goes in the config"
)


class Strict(BaseModel):
    """Base for every section: unknown keys are errors, not silently ignored typos."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Strict):
    """Where a secret lives: an environment variable or a file (e.g. a mounted secret)."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_a_value(cls, data: Any) -> Any:
        # Every secret setting of every source gets this one rule and its hint.
        if isinstance(data, str | int | float):
            raise ValueError(REFERENCE_HINT)
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret names exactly one of 'env' or 'file'")
        return self

    def resolve(self) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise MissingSecretError(f"environment variable {self.env} is not set")
        elif self.file is not None:
            try:
                value = self.file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise MissingSecretError(f"secret file {self.file} cannot be read: {exc}") from exc
        else:
            raise MissingSecretError("a secret names exactly one of 'env' or 'file'")
        remember_secret(value)
        return value


class MissingSecretError(RuntimeError):
    pass
