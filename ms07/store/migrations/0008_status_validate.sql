-- The job status CHECK that 0004 added NOT VALID, validated: a scan of distribution_jobs
-- under SHARE UPDATE EXCLUSIVE, which lets submits and outcomes write meanwhile.
ALTER TABLE distribution_jobs VALIDATE CONSTRAINT distribution_jobs_status_check;
