"""What a job's files hold and the files mxft makes of them: RecordIO and params readers, labels, packing
(``prepare``, ``images``), trimmed params, the demo's assets, the cache's atomic files, a run folder's records
(``runstate``). Imports ``spec`` and ``cluster`` only."""
