"""Studies: the values every series of a study must share, and each series' number in it.

A PACS shows one set of patient and study values per study, so the first series of a study
fixes them and later series are merged with them in one transaction (two workers never both
think they are first); see :func:`node.convert.study.merge`.
"""

from __future__ import annotations

import json
import time

from node.service.journal.runner import QueryRunner


class Studies(QueryRunner):
    def reconcile_study(self, values, series_uid: str, own_number: int | None = None):
        """What a series joining ``values.study_uid`` must carry, and its SeriesNumber: the
        study's remembered values merged with its own. StudyConflict (nothing recorded) when
        they disagree.

        ``values`` is a node.convert.study.StudyValues; what was remembered counts as sent.
        ``own_number``: a number a source named for the series; the others keep clear of it.
        """
        from node.convert.study import StudyValues, merge, series_number

        uid = values.study_uid
        with self._tx():
            self._execute("lock_study", {"study_uid": uid})
            row = self._one("study_values", study_uid=uid)
            merged = values if row is None else merge(
                StudyValues.from_json(uid, json.loads(row[0])), values)
            self._execute("put_study_values", {
                "study_uid": uid, "study_values": json.dumps(merged.as_json(), sort_keys=True),
                "now": time.time()})
            found = self._one("series_number", study_uid=uid, series_uid=series_uid)
            if own_number is not None:
                number = own_number
            elif found is not None:
                return merged, found[0]
            else:
                taken = {n for (n,) in self._all("series_numbers", study_uid=uid)}
                number = series_number(series_uid, taken)
            self._execute("put_series_number", {"study_uid": uid, "series_uid": series_uid,
                                                "number": number})
        return merged, number
