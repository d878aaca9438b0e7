"""Intake: every page read (files, URLs, data URIs), checked and normalised once to what the model
sees, before planning.

Modules: `files` (local files under QBQ_PAGE_ROOTS), `ssrf` (which URLs and addresses are
allowed), `fetch` (the download adapter, httpx), `normalise` (decode, orient, convert, resize,
encode), `cache` (normalised images on disk; `model_image_url` reads them back for a request),
`reader` (one source in, its pages out), `class_scan` (a class in one file, cut into students).
"""
