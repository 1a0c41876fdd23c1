"""schemathesis hooks for phasefleet's contract run (tests/api_contract.rs).

`POST /v1/uploads` takes a tar archive. schemathesis has no serializer for
application/x-tar, so the bytes it generates become the content of one regular file
in a tar archive: a well-formed upload whose content is arbitrary.
"""

import io
import tarfile

import schemathesis


@schemathesis.serializer("application/x-tar")
def tar_archive(ctx, value):
    if isinstance(value, bytes):
        data = value
    else:
        data = str(value).encode("utf-8", errors="ignore")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        member = tarfile.TarInfo("fuzz/input")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()
