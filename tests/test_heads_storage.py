"""A head's job file (heads/storage.py), in process: the engine's HeadJob reads and writes the layout protobuf's
JSON gave job.json before it, and a job a stop cut short is reported FAILED."""

from __future__ import annotations

import json

from google.protobuf import json_format

from offshelf.protos.v1 import heads_pb2
from offshelf.service.heads.storage import INTERRUPTED, JOB_FILE, HeadJob, JobState, interrupted_job, record_job


def test_a_job_file_reads_and_writes_as_protobufs_json_did():
    wire = heads_pb2.HeadJob(
        head="birds", version=3, state=heads_pb2.JOB_STATE_RUNNING, progress=0.5, message="fitting"
    )
    earlier = json_format.MessageToJson(wire, preserving_proto_field_name=True)
    job = HeadJob.from_json(earlier)
    assert job == HeadJob("birds", 3, JobState.RUNNING, 0.5, "fitting") and job.active
    assert json_format.Parse(job.to_json(), heads_pb2.HeadJob()) == wire
    assert {s.name: s.value for s in JobState} == {
        n.removeprefix("JOB_STATE_"): v for n, v in heads_pb2.JobState.items()
    }


def test_a_job_left_in_a_heads_folder_is_reported_interrupted(tmp_path):
    assert interrupted_job(tmp_path / "none") is None
    record_job(tmp_path / "birds", HeadJob("birds", 2, JobState.QUEUED))
    assert interrupted_job(tmp_path / "birds") == HeadJob("birds", 2, JobState.FAILED, 0.0, INTERRUPTED)
    (tmp_path / "cut" / JOB_FILE).parent.mkdir()
    (tmp_path / "cut" / JOB_FILE).write_text(json.dumps({"head": "cut", "version": "4"})[:10])  # half written
    assert interrupted_job(tmp_path / "cut") == HeadJob("cut", 0, JobState.FAILED, 0.0, INTERRUPTED)
