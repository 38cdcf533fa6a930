-- Path risk in steering (issue 11, item 4): steering reads the path scores a scorer confirmed
-- within `risk.max_score_age` and checks every second whether that set changed (stale path
-- scores are left out, not counted high). Both scan path rows by age, as the expiry check of
-- appliance scores does with risk_scores_confirmed.
CREATE INDEX risk_scores_path_confirmed ON risk_scores (confirmed_at) WHERE subject_kind = 'path';
