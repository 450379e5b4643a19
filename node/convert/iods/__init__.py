"""One module per IOD: what each writes, and from where (PS3.3)."""
