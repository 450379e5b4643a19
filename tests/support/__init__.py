"""Helpers shared by the tests (no test module imports another): the journal, PostgreSQL,
Orthanc, the NIfTI files the tests make, the network peers. Import them from here."""
