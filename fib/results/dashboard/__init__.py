"""Static HTML dashboard over the history store (see site.py)."""
from .site import SiteOptions, build_dashboard

__all__ = ["SiteOptions", "build_dashboard"]
