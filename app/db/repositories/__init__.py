"""Data access: one repository per aggregate, each wrapping an AsyncSession."""
