-- Issue 20: destinations managed at runtime. PostgreSQL is their source of truth: the
-- whole destination as given (the config's shape, secret *references* included, never a
-- secret value) lives in ``spec``; ``version`` grows on every change, so a replica
-- compares versions to know what to rebuild. A row whose spec is NULL predates this
-- migration (written by the old config sync): it is not managed, and the engine seeds
-- the managed set from its config on the first start after the upgrade.
ALTER TABLE destinations ADD COLUMN IF NOT EXISTS spec jsonb;
ALTER TABLE destinations ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 0;
ALTER TABLE destinations ADD COLUMN IF NOT EXISTS paused boolean NOT NULL DEFAULT false;
ALTER TABLE destinations ADD COLUMN IF NOT EXISTS paused_at timestamptz;
ALTER TABLE destinations ADD COLUMN IF NOT EXISTS paused_reason text;
ALTER TABLE destinations ADD COLUMN IF NOT EXISTS changed_by text;
-- Secrets given through the API, AES-GCM ciphertext only (ms07/secretbox.py), by field
-- ("auth.token"): {"ciphertext", "fingerprint", "changed_at"}. The spec names them with a
-- reference of the form ms07-stored:<destination>/<field>.
ALTER TABLE destinations ADD COLUMN IF NOT EXISTS secrets jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Job status 'paused': accepted for a paused destination, held, not attempted. Added
-- NOT VALID: the swap takes its lock for an instant instead of scanning every job under
-- it (the constraint holds for every row written from now on); 0008 validates the old
-- rows under a lock that lets writes go on, and 0009 builds the held jobs' index
-- concurrently.
ALTER TABLE distribution_jobs DROP CONSTRAINT IF EXISTS distribution_jobs_status_check;
ALTER TABLE distribution_jobs ADD CONSTRAINT distribution_jobs_status_check
    CHECK (status IN ('queued', 'processing', 'retrying', 'delivered', 'failed', 'dead', 'paused')) NOT VALID;
