"""Errors a user can fix. Each message is one line: what is wrong, and how to fix it."""

from __future__ import annotations


class MROError(Exception):
    """Base class of every error meant for the user (printed as one line, exit code 2)."""


class ConfigError(MROError):
    """A study file or an argument is wrong."""


class DataError(MROError):
    """A data file is missing, unreadable, or holds something it should not."""


class CheckpointError(MROError):
    """A supernet checkpoint is missing, corrupt, or belongs to another study."""


class OutputError(MROError):
    """An output file cannot be written where it was asked for (a special file, a read-only or
    pseudo file system, no permission, no space)."""


class ResourceError(MROError):
    """A study, a data file or an argument asks for more memory than the machine has."""


class TrainingError(MROError):
    """Training diverged (a loss or a gradient became NaN or infinite); nothing was saved."""
