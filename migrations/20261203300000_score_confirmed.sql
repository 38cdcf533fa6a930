-- Score expiry (issue 11, live scoring that can be trusted): a stored score is only as good as
-- the last time a scorer confirmed it. The live scorer writes a score when it moves by more than
-- its epsilon (computed_at), and between two moves confirms the unchanged score of every subject
-- it still hears from (confirmed_at). A score not confirmed within `risk.max_score_age` counts
-- as unknown-high in steering: a silent appliance, or one whose scorer died, is never
-- last-known-low.
--
-- Existing rows stay valid: they count as confirmed when they were computed.
ALTER TABLE risk_scores ADD COLUMN confirmed_at timestamptz;
UPDATE risk_scores SET confirmed_at = computed_at;
ALTER TABLE risk_scores ALTER COLUMN confirmed_at SET NOT NULL,
                        ALTER COLUMN confirmed_at SET DEFAULT now();
-- Expiry checks scan by age.
CREATE INDEX risk_scores_confirmed ON risk_scores (confirmed_at) WHERE subject_kind = 'appliance';

-- A confirmation is not news: it does not notify the steering servers (they check ages on
-- their own clock). Every other change does, as before. (risk_history's trigger, created by a
-- later-numbered migration, keys its rows by computed_at, which a confirmation leaves alone: a
-- confirmation rewrites that history row in place and never adds one.)
DROP TRIGGER risk_scores_notify ON public.risk_scores;
CREATE TRIGGER risk_scores_notify_ins_del AFTER INSERT OR DELETE ON public.risk_scores
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_notify('subject');
CREATE TRIGGER risk_scores_notify_upd AFTER UPDATE ON public.risk_scores
    FOR EACH ROW WHEN ((OLD.score, OLD.score_low, OLD.score_high, OLD.model_version, OLD.computed_at)
                       IS DISTINCT FROM
                       (NEW.score, NEW.score_low, NEW.score_high, NEW.model_version, NEW.computed_at))
    EXECUTE FUNCTION public.shadowsteer_notify('subject');
-- Replicated rows notify too.
ALTER TABLE public.risk_scores ENABLE ALWAYS TRIGGER risk_scores_notify_ins_del;
ALTER TABLE public.risk_scores ENABLE ALWAYS TRIGGER risk_scores_notify_upd;
