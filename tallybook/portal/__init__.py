"""Customer portal: tokens that let one customer read its own usage, and nothing else."""

from tallybook.portal.service import (
    CreatedPortalToken,
    PortalError,
    PortalService,
    PortalToken,
)

__all__ = ["CreatedPortalToken", "PortalError", "PortalService", "PortalToken"]
