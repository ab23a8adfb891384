"""Skeleton; filled by its integration issue."""
