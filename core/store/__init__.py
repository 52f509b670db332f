"""The store: a directory holding one FAISS index per modality partition plus SQLite metadata.

See :class:`anybind.store.store.Store`; the layout and the commit protocol are described in
``docs/store.md``.
"""

from .hits import Hit, SearchResult
from .records import IndexReport, RemoveReport
from .store import Store

__all__ = ["Hit", "IndexReport", "RemoveReport", "SearchResult", "Store"]
