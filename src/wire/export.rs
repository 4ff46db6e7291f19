//! Export stream (serve ImportPaths/ExportPaths).
