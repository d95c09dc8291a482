"""The shipped profiles (``sim/profiles/data/*.toml``) and the lookup of a profile by name or path."""

from __future__ import annotations

from difflib import get_close_matches
from importlib import resources
from pathlib import Path

from sim.profiles.profile import Profile, ProfileError, profile_from_toml, read_profile


def shipped_names() -> list[str]:
    root = resources.files("sim.profiles").joinpath("data")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name, or a profile TOML file by path (a ``.toml`` name, or any existing file)."""
    if name_or_path.endswith(".toml") or Path(name_or_path).is_file():
        return read_profile(name_or_path)
    data = resources.files("sim.profiles").joinpath("data").joinpath(f"{name_or_path}.toml")
    if not data.is_file():
        names = shipped_names()
        match = get_close_matches(name_or_path, names, n=1)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        raise ProfileError(f"unknown profile {name_or_path!r}{hint} (shipped: {', '.join(names)}; or a .toml path)")
    profile = profile_from_toml(data.read_text(), f"{name_or_path}.toml")
    if profile.name != name_or_path:
        raise ProfileError(f"{name_or_path}.toml: name = {profile.name!r} differs from its file name")
    return profile
