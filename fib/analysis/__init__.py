"""Analysis of captures: kernels attributed to stages, nsys/torch readers, stage tables (used by profile and report)."""
