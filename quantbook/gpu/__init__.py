"""CuPy raw-kernel GPU path (optional extra ``[gpu]``).  Importing quantbook never needs CuPy."""
