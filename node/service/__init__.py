"""The stateful side: settings, the journal, the one delivery step, the watcher, the node loop
and the operations that the console and the node share.

Nothing is imported here: ``dicom-node status`` must start without pydicom, pynetdicom or
nibabel, so each module loads only what it needs.
"""
