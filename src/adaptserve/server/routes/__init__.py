"""HTTP routes: thin glue over the pipeline and registries."""
