"""Methods named by a string with settings: ``"snapkv:window=64,kernel=5"``."""

from __future__ import annotations

from ..errors import UsageError


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_spec(spec: str, *, what: str) -> tuple[str, dict]:
    """``"name:key=value,..."`` -> (name, settings); values become int / float / bool."""
    if not isinstance(spec, str):
        raise UsageError(f"{what} must be a name such as 'default', got {spec!r}.")
    name, _, settings = spec.partition(":")
    kwargs = {}
    for item in filter(None, settings.split(",")):
        key, eq, val = item.partition("=")
        if not eq:
            raise UsageError(f"{what} settings are key=value pairs, got {item!r} in {spec!r}.")
        kwargs[key.strip()] = _value(val.strip())
    return name.strip(), kwargs


def build_from_spec(spec: str, registry: dict, default: str, *, what: str):
    """An instance of ``registry[name]`` built from a spec string; ``"default"`` = ``default``;
    an unknown name or bad setting is a :class:`UsageError` listing the choices."""
    name, kwargs = parse_spec(spec, what=what)
    cls_name = default if name == "default" else name
    if cls_name not in registry:
        raise UsageError(f"unknown {what} {spec!r}; choose one of: default, {', '.join(registry)}.")
    try:
        return registry[cls_name](**kwargs)
    except TypeError as exc:
        raise UsageError(f"bad settings for {what} {cls_name!r}: {exc}") from None
