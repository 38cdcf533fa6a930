-- Risk history of appliances, for the admin API's and the dashboard's charts of risk over time.
--
-- Derived, not written by the scorer: every local insert or update of an appliance's row in
-- risk_scores also lands here, through a trigger. The live scorer writes risk_scores only when
-- a score moves by more than its epsilon (at most max_writes_per_round per round), so this
-- table grows at the same bounded rate and holds the score as a step function: between two
-- rows the score stayed within epsilon of the earlier one.
--
-- The trigger fires in the default (origin) mode only: on a subscriber, history of another
-- region's appliances arrives by replication of this table (region-keyed like every other),
-- never a second time from the replicated risk_scores row.
CREATE TABLE risk_history (
    region         text             NOT NULL,
    subject_kind   text             NOT NULL CHECK (subject_kind IN ('appliance', 'path')),
    subject        text             NOT NULL CHECK (length(subject) BETWEEN 1 AND 200),
    computed_at    timestamptz      NOT NULL,
    score          double precision NOT NULL CHECK (score BETWEEN 0 AND 1),
    score_low      double precision NOT NULL CHECK (score_low BETWEEN 0 AND 1),
    score_high     double precision NOT NULL CHECK (score_high BETWEEN 0 AND 1),
    model_version  text             NOT NULL CHECK (length(model_version) BETWEEN 1 AND 200),
    PRIMARY KEY (region, subject_kind, subject, computed_at),
    CHECK (score_low <= score AND score <= score_high)
);
-- "History of appliance X from T1 to T2" is served by an index on (subject, time); retention
-- scans by time.
CREATE INDEX risk_history_subject ON risk_history (subject_kind, subject, computed_at);
CREATE INDEX risk_history_ts ON risk_history USING brin (computed_at);

CREATE FUNCTION public.shadowsteer_risk_history() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
    INSERT INTO public.risk_history
        (region, subject_kind, subject, computed_at, score, score_low, score_high, model_version)
    VALUES
        (NEW.region, NEW.subject_kind, NEW.subject, NEW.computed_at, NEW.score, NEW.score_low,
         NEW.score_high, NEW.model_version)
    ON CONFLICT (region, subject_kind, subject, computed_at) DO UPDATE
        SET score = EXCLUDED.score, score_low = EXCLUDED.score_low,
            score_high = EXCLUDED.score_high, model_version = EXCLUDED.model_version;
    RETURN NULL;
END
$$;

CREATE TRIGGER risk_scores_history AFTER INSERT OR UPDATE ON public.risk_scores
    FOR EACH ROW WHEN (NEW.subject_kind = 'appliance')
    EXECUTE FUNCTION public.shadowsteer_risk_history();

-- Retention covers the new table (same batches as the others).
CREATE OR REPLACE FUNCTION public.shadowsteer_prune(tbl text, older_than timestamptz, batch_limit integer)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
    ts_column text;
    deleted bigint;
BEGIN
    IF batch_limit IS NULL OR batch_limit < 1 OR batch_limit > 1000000 THEN
        RAISE EXCEPTION 'batch_limit must be between 1 and 1000000, got %', batch_limit;
    END IF;
    ts_column := CASE tbl
        WHEN 'appliance_health' THEN 'ts'
        WHEN 'path_probes' THEN 'ts'
        WHEN 'steering_decisions' THEN 'decided_at'
        WHEN 'failure_events' THEN 'started_at'
        WHEN 'risk_history' THEN 'computed_at'
        ELSE NULL END;
    IF ts_column IS NULL THEN
        RAISE EXCEPTION 'table % has no retention policy', tbl;
    END IF;
    EXECUTE pg_catalog.format(
        'DELETE FROM public.%I WHERE ctid = ANY (ARRAY(SELECT ctid FROM public.%I WHERE %I < $1 LIMIT $2))',
        tbl, tbl, ts_column)
        USING older_than, batch_limit;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;
