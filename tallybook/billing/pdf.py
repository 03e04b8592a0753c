"""The invoice as a PDF: the same HTML page the API serves, rendered by WeasyPrint.

WeasyPrint lays out HTML and CSS itself (no browser) and needs Pango from the system (Debian:
libpango-1.0-0, libpangoft2-1.0-0, and a font such as fonts-dejavu-core). It is the optional
`pdf` extra (`pip install 'tallybook[pdf]'`): a server without it, or without Pango, answers the
PDF route with a problem that says what to install, and everything else works as before.
The import is deferred to the first PDF, so servers that never render one do not pay for it.
"""

from __future__ import annotations

import logging
from typing import Any

from tallybook.errors import DomainError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install the pdf extra (pip install 'tallybook[pdf]') and Pango "
    "(Debian/Ubuntu: apt-get install libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core)"
)


class PdfUnavailable(DomainError):
    status = 501
    code = "pdf-unavailable"


def _weasyprint() -> Any:
    try:
        import weasyprint
    except ImportError as exc:  # not installed
        raise PdfUnavailable(f"PDF rendering is not available on this server ({exc}): {INSTALL_HINT}") from None
    except OSError as exc:  # installed, but the system libraries (Pango) are missing
        raise PdfUnavailable(f"PDF rendering cannot load its system libraries ({exc}): {INSTALL_HINT}") from None
    return weasyprint


def available() -> str | None:
    """None when PDFs can be rendered here; else what to install."""
    try:
        _weasyprint()
    except PdfUnavailable as exc:
        return exc.detail
    return None


def html_to_pdf(html: str) -> bytes:
    """The page as PDF bytes. The page is self-contained (inline CSS, no images or fonts fetched),
    so WeasyPrint is given no base URL and fetches nothing."""
    weasyprint = _weasyprint()

    def refuse(url: str, *_args: Any, **_kwargs: Any) -> Any:
        raise ValueError(f"invoice pages fetch no resources (asked for {url!r})")

    return bytes(weasyprint.HTML(string=html, url_fetcher=refuse).write_pdf())


__all__ = ["INSTALL_HINT", "PdfUnavailable", "available", "html_to_pdf"]
