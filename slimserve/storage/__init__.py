"""Model and data storage: the spec's URIs fetched into a content-addressed cache, and s3:// uploads.

Schemes: s3:// (s3fs; AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION,
AWS_ENDPOINT_URL(_S3) for MinIO), gs:// (gcsfs; GOOGLE_APPLICATION_CREDENTIALS), http(s):// (fsspec),
hf://[datasets/]org/repo[@revision][/path] (huggingface_hub; HF_TOKEN, HF_ENDPOINT), pvc://claim/path
(read where a Job mounts the claim: /mnt/pvc/<claim>, or $SLIMSERVE_PVC_ROOT), file:// and paths.

- `localize(model, base_dir)` → (the model with local paths, the folder for imports): what every
  `slimserve` command calls before its work.
- `fetch_into(model, base_dir, out_dir)` → a self-contained folder for the next container
  (`slimserve fetch`, the storage step of a cluster Job).
- `check_reachable(model, base_dir)`: every URI exists; nothing downloaded (`slimserve validate`).
- `upload_repository(local_dir, uri)` → `uri/<version>`; `triton_repository_uri(uri)` for Triton.

The cache lives in $SLIMSERVE_CACHE_DIR (default ~/.cache/slimserve); deleting it is always safe.
The fsspec family is imported only when a remote URI is read.
"""

from typing import Final

from slimserve.storage.cache import ENV_CACHE_DIR, Cache, CorruptDownload
from slimserve.storage.errors import StorageUnavailable
from slimserve.storage.fetcher import fetch
from slimserve.storage.spec import check_reachable, fetch_into, localize, pvc_claims
from slimserve.storage.upload import triton_repository_uri, upload_repository
from slimserve.storage.uris import ENV_PVC_ROOT, PVC_MOUNT_ROOT, is_remote

# Where a Job mounts the Secret that spec.storage.secretName names (its keys are also env variables).
SECRET_MOUNT_PATH: Final = "/var/run/secrets/slimserve/storage"

__all__ = [
    "ENV_CACHE_DIR",
    "ENV_PVC_ROOT",
    "PVC_MOUNT_ROOT",
    "SECRET_MOUNT_PATH",
    "Cache",
    "CorruptDownload",
    "StorageUnavailable",
    "check_reachable",
    "fetch",
    "fetch_into",
    "is_remote",
    "localize",
    "pvc_claims",
    "triton_repository_uri",
    "upload_repository",
]
