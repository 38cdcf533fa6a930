-- A client's answer may change to "no appliance" (primary and shadow both unusable): the audit
-- trail records that change too, with no target appliance.
ALTER TABLE steering_decisions ALTER COLUMN to_appliance DROP NOT NULL;
