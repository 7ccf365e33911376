"""Mutation check of the ADD core: plant one plausible bug at a time, run the tests that cover it, and report
whether some test failed (CAUGHT) or all passed (MISSED). Every mutation must be CAUGHT.

    .venv/bin/python tests/mutations.py            # all 112 (31 min on the 2-core AMD EPYC, 2026-12-06)
    .venv/bin/python tests/mutations.py "R1"       # those whose name contains "R1"

Not collected by pytest (the file name does not start with test_). It edits files in place and restores them;
do not run it beside another job that reads addlib/.
"""
import pathlib
import subprocess
import sys

R = pathlib.Path(__file__).resolve().parents[1]
T_CORE = "tests/test_add_reference.py tests/test_add.py tests/test_losses.py tests/test_discriminator.py"
# the cases of the two multi-step options (add.student_input, add.lambda_ode)
T_ADD = "tests/test_add_reference.py tests/test_add.py -k 'student_input or ode or backward_simulation or ablation_variants'"
M = [
 ("teacher target not stop-gradiented", [("addlib/losses.py", "distance(x_hat, x_target.detach())", "distance(x_hat, x_target)"),
   ("addlib/objective.py", "            with torch.no_grad(), record_function(\"add/distill_target\"):\n                z_t = self.sched_t.add_noise(z_hat.detach(),", "            if True:\n                z_t = self.sched_t.add_noise(z_hat,")], T_CORE),
 ("L_G sign flipped", [("addlib/objective.py", "l_adv = losses.hinge_g(", "l_adv = -losses.hinge_g(")], T_CORE),
 ("c(t) at s instead of t", [("addlib/objective.py", "self.weighting(self.sched_t.alpha(d.t, pred), self.sched_t.sigma(d.t, pred))", "self.weighting(self.sched_t.alpha(d.s, pred), self.sched_t.sigma(d.s, pred))")], T_CORE),
 ("teacher re-noising reuses the student's eps", [("addlib/objective.py", "d.eps_prime, d.t)", "d.eps, d.t)")], T_CORE),
 ("R1 dropped from L_D", [("addlib/objective.py", "return l_d + self.gamma * r1, parts", "return l_d, parts")], T_CORE),
 ("perceptual distance without channel normalisation", [("addlib/losses.py", "        a = a / (a.norm(dim=1, keepdim=True) + 1e-8)\n        b = b / (b.norm(dim=1, keepdim=True) + 1e-8)\n", "")], T_CORE),
 ("local BN equal-groups path with whole-batch statistics", [("addlib/discriminator.py", "g = x.reshape(n_groups, B // n_groups, *x.shape[1:])", "g = x.reshape(1, B, *x.shape[1:])")], T_CORE),
 ("spectral norm removed", [("addlib/discriminator.py", "    return nn.utils.parametrizations.spectral_norm(conv)", "    return conv")], T_CORE),
 ("c_img not normalised", [("addlib/discriminator.py", "[F.normalize(c_img, dim=-1)]", "[c_img]")], T_CORE),
 ("conditioning ignored", [("addlib/discriminator.py", "cmap = self.cmapper(c)[:, :, None]", "cmap = self.cmapper(torch.zeros_like(c))[:, :, None]")], T_CORE),
 ("teacher re-noised on the student's schedule", [("addlib/objective.py", "z_t = self.sched_t.add_noise(", "z_t = self.sched_s.add_noise(")], T_CORE + " tests/test_latent.py"),
 ("teacher target read back on the student's schedule", [("addlib/objective.py", "z_psi = teacher_x0(self.teacher, self.sched_t, z_t,", "z_psi = teacher_x0(self.teacher, self.sched_s, z_t,")], T_CORE),
 ("c_img ODE solve on the student's schedule", [("addlib/objective.py", "z_ode[rows] = teacher_x0(self.teacher, self.sched_t,", "z_ode[rows] = teacher_x0(self.teacher, self.sched_s,")], T_CORE),
 ("R1 on the token-mean logit (vanishes as 1/N)", [("addlib/losses.py", "total = sum(l.float().sum() for l in logits)", "total = sum(l.float().mean(1).sum() for l in logits)"),
   ("addlib/losses.py", "g.float().pow(2).flatten(1).sum(1) / l.shape[1] for", "g.float().pow(2).flatten(1).sum(1) for")], T_CORE),
 ("power iteration in every forward (heads in train mode)", [("addlib/discriminator.py", "        super().train(mode)\n        self.heads.eval()\n", "        super().train(mode)\n")], T_CORE),
 ("no power iteration in the step", [("addlib/distillation.py", "            d_raw.spectral_step()", "            pass")], T_CORE),
 ("L_G leaves gradients on the heads", [("addlib/distillation.py", "        d_raw.heads.requires_grad_(False)\n", "")], T_CORE),
 ("patch tap before the position embedding", [("addlib/discriminator.py", "backbone.pos_drop.register_forward_hook", "backbone.patch_embed.register_forward_hook"),
   ("addlib/discriminator.py", "            tok = self._store[name]\n            feats.append(tok[:, p:] + tok[:, :1])", "            tok = self._store[name]\n            feats.append(tok if name == 'patch' else tok[:, p:] + tok[:, :1])")], T_CORE),
 ("sampler re-noise stream = starting-noise seed", [("addlib/sampling.py", "    g = renoise_generator(seed)\n", "    g = torch.Generator().manual_seed(seed)\n")], "tests/test_sampling.py"),
 ("sampler re-noises to the current timestep", [("addlib/sampling.py", "x = schedule.add_noise(x0, eps, t_next)", "x = schedule.add_noise(x0, eps, t)")], "tests/test_sampling.py"),
 ("NFSD delta_D sign", [("addlib/targets.py", "delta_d = torch.where(small_t, e_u, e_u - e_n)", "delta_d = torch.where(small_t, e_u, e_n - e_u)")], "tests/test_add.py"),
 ("NFSD empty negative prompt accepted", [("addlib/config/add.py", 'self.weighting != "nfsd" or self.nfsd_negative_prompt.strip() != ""', "True")], "tests/test_config.py"),
 ("teacher schedule rescaling not checked", [("addlib/config/teacher.py", '''              "rescale_zero_terminal_snr": bool(sc.get("rescale_betas_zero_snr", False))}''', "}")], "tests/test_latent.py"),
 ("student's steps unchecked (trailing for any k)", [("addlib/sampling.py", "    if isinstance(steps, bool) or not isinstance(steps, int) or steps not in allowed:", "    if False:")], "tests/test_sampling.py"),
 ("a stage's code missing from its dvc.yaml deps", [("dvc.yaml", "      - addlib/pipeline/add.py\n", "")], "tests/test_stage_deps.py"),
 ("stage bodies see undeclared params sections", [("addlib/stages.py", "Path(params_file).name, sections=stage_sections(stage, root))", "Path(params_file).name)")], "tests/test_stage_deps.py"),
 ("a section's schema is no dep of a stage that reads it", [("addlib/deps.py", "    schemas = [PKG / \"config\" / f\"{s}.py\" for s in sections if", "    schemas = [PKG / \"config\" / f\"{s}.py\" for s in () if")], "tests/test_stage_deps.py"),
 ("annotation-only imports counted as deps", [("addlib/deps.py", "if not _is_type_checking(child)", "if True")], "tests/test_stage_deps.py"),
 ("the students' solves ignore ode_solver", [("addlib/objective.py", "dc.ode_guidance, steps[rows], dc.ode_solver)", "dc.ode_guidance, steps[rows])")], "tests/test_add.py"),
 ("DPM-Solver++ without its second-order term", [("addlib/targets.py", "    d = x0.to(xf.dtype) + c.view(", "    d = x0.to(xf.dtype) + 0 * c.view(")], "tests/test_add.py"),
 ("DPM-Solver++ with the current x0 as the previous one", [("addlib/targets.py", "                x0_prev[rows], h_prev[rows] = x0_j, h", "                x0_prev[rows], h_prev[rows] = x0_j, h_prev[rows]")], "tests/test_add.py"),
 ("Figure 4 / student grid blocks in the wrong rows", [("addlib/plots.py", "row.extend(images[r * per_row:(r + 1) * per_row])", "row.extend(images[r::len(row_labels)][:per_row])")], "tests/test_plots.py"),
 ("checkpoint fingerprint blind to the inputs' content", [("addlib/training.py", "    return h.hexdigest()\n", '    return ""\n')], "tests/test_training.py tests/test_add.py"),
 ("grids of the steps before a resume lost", [("addlib/distillation.py", "            if int(png.stem.split(\"_\")[1]) <= run[\"end\"] and not (Path(grid_dir) / png.name).exists():", "            if False:")], "tests/test_add.py"),
 ("a save deletes another run's checkpoints", [("addlib/training.py", "        for old in self.run_dir.glob(\"checkpoint-*\"):", "        for old in self.folder.glob(\"*/checkpoint-*\"):")], "tests/test_training.py"),
 ("diverged weights checkpointed", [("addlib/training.py", "        if not all(self.sane(w.values()) for w in weights.values()):\n            return None\n", "")], "tests/test_training.py"),
 ("c_img of pure-noise fakes from the real x0", [("addlib/objective.py", '(pure & (dc.c_img_pure_noise == "teacher_ode"))', "(pure & False)")], T_CORE),
 ("c_img of noisy fakes: the teacher's solve ignored", [("addlib/objective.py", '(~pure & (dc.c_img_noisy == "teacher_ode"))', "(~pure & False)")], T_CORE),
 ("c_img solves from s < T-1 as long as from pure noise", [("addlib/objective.py", "steps = (dc.ode_steps * (s + 1) + self.sched_t.T - 1) // self.sched_t.T", "steps = torch.full_like(s, dc.ode_steps)")], T_CORE),
 ("perceptual+pseudo_huber without its pixel half", [("addlib/objective.py", "+ losses.distance_pseudo_huber(a, b))", "+ 0.0)")], T_CORE),
 ("c_img of noisy fakes: the solve from the student's schedule", [("addlib/objective.py", ", z_s, self.sched_t.add_noise(z_x0, eps, s))", ", z_s, z_s)")], T_CORE),
 ("backward simulation: the chain ignored", [("addlib/objective.py", '        if self.cfg.student_input == "data":\n            return z0', "        if True:\n            return z0")], T_ADD),
 ("backward simulation: the chain starts from eps", [("addlib/objective.py", "x = d.eps_chain[:, 0].to(z0.dtype).clone()", "x = d.eps.to(z0.dtype).clone()")], T_ADD),
 ("backward simulation: every re-noising reuses the start noise", [("addlib/objective.py", "d.eps_chain[nxt, j + 1]", "d.eps_chain[nxt, 0]")], T_ADD),
 ("backward simulation: the estimate one call short", [("addlib/objective.py", "            on = m > j  ", "            on = m > j + 1  ")], T_ADD),
 ("backward simulation: gradient through the chain", [("addlib/objective.py", "    @torch.no_grad()\n    def sampled_x0(", "    def sampled_x0(")], T_ADD),
 ("backward simulation: the noisy c_img solve from the data's x0", [("addlib/objective.py", "self.teacher_solve(z_x0, z_s,", "self.teacher_solve(z0, z_s,")], T_ADD),
 ("backward simulation: the chain drawn before eps_prime", [("addlib/objective.py", "    eps_prime = torch.randn((batch, *latent_shape), generator=generator)\n    eps_chain = (torch.randn((batch, len(tau) - 1, *latent_shape), generator=generator)\n                 if cfg.student_input == \"student\" else None)\n", "    eps_chain = (torch.randn((batch, len(tau) - 1, *latent_shape), generator=generator)\n                 if cfg.student_input == \"student\" else None)\n    eps_prime = torch.randn((batch, *latent_shape), generator=generator)\n")], T_ADD),
 ("ODE regression: no c(s)", [("addlib/objective.py", "c_s = self.weighting(self.sched_s.alpha(s, p), self.sched_s.sigma(s, p))", "c_s = torch.ones_like(s, dtype=p.dtype)")], T_ADD),
 ("ODE regression: c(s) on the teacher's schedule", [("addlib/objective.py", "c_s = self.weighting(self.sched_s.alpha(s, p), self.sched_s.sigma(s, p))", "c_s = self.weighting(self.sched_t.alpha(s, p), self.sched_t.sigma(s, p))")], T_ADD),
 ("ODE regression: c at the teacher's t", [("addlib/objective.py", "p, s = pred[ode_rows], d.s[ode_rows]", "p, s = pred[ode_rows], d.t[ode_rows]")], T_ADD),
 ("ODE regression: the solve made for c_img rows only", [("addlib/objective.py", "d.s, img_rows | ode_rows, states, mask)", "d.s, img_rows, states, mask)")], T_ADD),
 ("ODE regression: the target is the student's own output", [("addlib/objective.py", "target = z_ode[ode_rows] if latent else self.space.decode(z_ode[ode_rows])", "target = pred[ode_rows].detach()")], T_ADD),
 ("ODE regression on pure-noise inputs too", [("addlib/objective.py", "return img, (~pure if self.cfg.lambda_ode > 0 else none)", "return img, (~none if self.cfg.lambda_ode > 0 else none)")], T_ADD),
 ("ODE regression: a batch without noisy inputs indexes the missing solve", [("addlib/objective.py", "            if ode_rows.any():\n                with torch.no_grad(), record_function(\"add/ode_target_decode\"):\n                    target", "            if True:\n                with torch.no_grad():\n                    target")], T_ADD),
 # speed-ups that must compute what the slow path did (issue 37)
 ("lockstep solve: every row on the longest solve's timesteps", [("addlib/targets.py", "t_j = (t_r.float() * (n_j - j) / n_j).round().long()", "t_j = (t_r.float() * (n.max() - j) / n.max()).round().long()")], T_CORE),
 ("lockstep solve: re-noised one step too high", [("addlib/targets.py", "(n_j - j - 1).clamp_min(0) / n_j)", "(n_j - j).clamp_min(0) / n_j)")], T_CORE),
 ("shared F: D's augmented reals get the unaugmented taps", [("addlib/objective.py", "detached(f_real, d.aug_real)", "detached(f_real, None)")], T_CORE),
 ("shared F: D's augmented fakes get the unaugmented taps", [("addlib/objective.py", "detached(f_hat, d.aug_fake)", "detached(f_hat, None)")], T_CORE),
 ("shared F: L_G on detached taps", [("addlib/objective.py", "                f_hat = self.D.features(x_hat)\n", "                f_hat = [f.detach() for f in self.D.features(x_hat)]\n")], T_CORE),
 ("shared F: D's fakes get the reals' taps", [("addlib/objective.py", "detached(f_hat, d.aug_fake))", "detached(f_real, d.aug_fake))")], T_CORE),
 # issue 38's test gaps: the teacher's guidance, the EMA's warm-up, a checkpoint under another add value, Elo's interval
 ("distillation target unguided", [("addlib/objective.py", "cfg.teacher_guidance, cfg.teacher_steps)", "1.0, cfg.teacher_steps)")], T_CORE),
 ("c_img / ODE solve unguided", [("addlib/objective.py", "dc.ode_guidance, steps[rows], dc.ode_solver)", "1.0, steps[rows], dc.ode_solver)")], T_CORE),
 ("guidance from the conditional side", [("addlib/sampling.py", "return v_u + w * (v_c - v_u)", "return v_c + w * (v_c - v_u)")], T_CORE),
 ("c_img of a fake from the student's own estimate: the data x0's", [("addlib/objective.py", "c_fake = self.fake_condition(pooled, c_img, z_ode, img_rows, z_x0, own)", "c_fake = self.fake_condition(pooled, c_img, z_ode, img_rows)")], T_ADD),
 ("backward simulation: every row on the 4-step sampler's chain", [("addlib/objective.py", "grids = [g for g in grids if set(g) <= set(tau)] + [tau]", "grids = [tau]")], T_ADD),
 ("backward simulation: the sampler's draw ignored", [("addlib/objective.py", "g = cands[int(float(u[i]) * len(cands))] if len(cands) > 1 else cands[0]", "g = cands[-1]")], T_ADD),
 ("EMA without its warm-up", [("addlib/models.py", "d = min(self.decay, (1 + self.updates) / (10 + self.updates))", "d = self.decay")], "tests/test_training.py"),
 ("EMA warm-up one update late", [("addlib/models.py", "d = min(self.decay, (1 + self.updates) / (10 + self.updates))", "d = min(self.decay, self.updates / (9 + self.updates))")], "tests/test_training.py"),
 ("add checkpoint fingerprint covers add.train only", [("addlib/distillation.py", "fingerprint(cfg, teacher.schedule.cfg,", "fingerprint(cfg.train, teacher.schedule.cfg,")], "tests/test_add.py"),
 ("Elo interval at the 25%/75% quantiles", [("addlib/preference.py", '"low": _quantile(v, 0.025), "high": _quantile(v, 0.975)', '"low": _quantile(v, 0.25), "high": _quantile(v, 0.75)')], "tests/test_preference.py"),
 ("Elo interval quantile without interpolation", [("addlib/preference.py", "    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (pos - lo)", "    return v[lo]")], "tests/test_preference.py"),
 ("Elo: the loser loses nothing", [("addlib/preference.py", "r[a], r[b] = r[a] + k * (s - e_a), r[b] - k * (s - e_a)", "r[a], r[b] = r[a] + k * (s - e_a), r[b]")], "tests/test_preference.py"),
 ("Elo: expected score from the wrong side", [("addlib/preference.py", "10.0 ** ((r[b] - r[a]) / 400.0)", "10.0 ** ((r[a] - r[b]) / 400.0)")], "tests/test_preference.py"),
 ("Elo bootstrap replays the given order", [("addlib/preference.py", "        rng.shuffle(order)\n", "")], "tests/test_preference.py"),
 ("Wilson without the z^2/4n^2 term", [("addlib/preference.py", " + z * z / (4 * n * n)", "")], "tests/test_preference.py"),
 ("a tie counted as a loss for the right side", [("addlib/preference.py", "opp, score = (b, s) if a == model else (a, 1.0 - s)", "opp, score = (b, s) if a == model else (a, float(s == 0.0))")], "tests/test_preference.py"),
 ("blindness: a always on the left", [("addlib/preference.py", "        rng.shuffle(a_left)\n", "        a_left = [True] * len(cells)\n")], "tests/test_preference.py"),
 ("vote for a foreign pair accepted", [("addlib/preference.py", '    if d["pair"] not in pairs:', "    if False:")], "tests/test_preference.py"),
 ("vote file rewritten instead of appended", [("addlib/preference.py", 'with open(path, "a", encoding="utf-8")', 'with open(path, "w", encoding="utf-8")')], "tests/test_preference.py"),
 ("a rater that failed its check still draws claims", [("addlib/preference.py", '        if not check["passed"]:', '        if False:')], "tests/test_preference.py"),
 ("rater check pairs pool images with the wrong prompted digit", [("addlib/preference.py", "y.repeat_interleave(k)", "y.repeat(k)")], "tests/test_preference.py"),
 ("rater check: real-vs-real band ignored", [("addlib/preference.py", " and abs(out[\"real_vs_real\"] - 0.5) <= check_band", "")], "tests/test_preference.py"),
 ("held-out check reals include the first image again", [("addlib/pipeline/preference.py", "        pool += idx[1:].tolist()", "        pool += idx[:-1].tolist()")], "tests/test_preference.py"),
 ("automatic vote ignores the tie band", [("addlib/preference.py", '"left" if d > tie else "right" if d < -tie else "tie"', '"left" if d > 0 else "right"')], "tests/test_preference.py"),
 ("CD: c_skip and c_out swapped", [("addlib/consistency.py", "return c_skip * x_t + c_out * schedule.x0_from_output(x_t, out, t)", "return c_out * x_t + c_skip * schedule.x0_from_output(x_t, out, t)")], "tests/test_consistency.py"),
 ("CD: the target from the online student", [("addlib/consistency.py", "out = loss_fn(student, target_net,", "out = loss_fn(student, raw_student,")], "tests/test_consistency.py"),
 ("CD: unguided teacher step", [("addlib/consistency.py", "v = guided_v(self.teacher, z_start, t_start, cond, empty, self.cfg.guidance)", "v = guided_v(self.teacher, z_start, t_start, cond, empty, 1.0)")], "tests/test_consistency.py"),
 ("CD: teacher step to the wrong timestep", [("addlib/consistency.py", "sched.eps_from_output(z_start, v, t_start), t_prev)", "sched.eps_from_output(z_start, v, t_start), t_start)")], "tests/test_consistency.py"),
 ("CD: no skipping interval", [("addlib/consistency.py", "return start, (start - self.k).clamp_min(0)", "return start, (start - 1).clamp_min(0)")], "tests/test_consistency.py"),
 ("CD: target network's EMA not checkpointed", [("addlib/consistency.py", 'emas={"ema": ema, "target": target_ema}', 'emas={"ema": ema}')], "tests/test_consistency.py"),
 ("CD: target network with the saved EMA's decay", [("addlib/consistency.py", "target_ema = EMA(student, cfg.target_decay)", "target_ema = EMA(student, tc.ema_decay)")], "tests/test_consistency.py"),
 ("CD: sampler ignores the consistency function", [("addlib/sampling.py", "            x0 = x0_fn(x, v, t)", "            x0 = schedule.x0_from_output(x, v, t)")], "tests/test_consistency.py"),
 ("CD: target network updated after the step's loss is skipped", [("addlib/consistency.py", "        target_ema.copy_to(target_net)\n", "")], "tests/test_consistency.py"),
 ("realism: outliers kept", [("addlib/metrics.py", "    keep = radii <= radii.median()", "    keep = radii >= 0")], "tests/test_metrics.py"),
 ("targets judged in the classifier's space only", [("addlib/evaluation.py", '        out["met"] = out["met"] and out["met_detail"]\n', "")], "tests/test_evaluation.py"),
 ("detail space scored against the classifier's reference", [("addlib/evaluation.py", "self.space(M.extract(self.detail, images), self.detail_ref_feats)", "self.space(M.extract(self.features, images), self.ref_feats)")], "tests/test_evaluation.py"),
 ("detail autoencoder trained on augmented images", [("addlib/evaluators.py", "            x = x_train[idx].to(accelerator.device)  # blurs", "            x = _augment(x_train[idx], g).to(accelerator.device)  # blurs")], "tests/test_evaluators.py"),
 ("detail autoencoder without input noise", [("addlib/evaluators.py", "loss = F.mse_loss(model_p(x + cfg.noise * torch.randn(x.shape, generator=g).to(x.device)), x)", "loss = F.mse_loss(model_p(x), x)")], "tests/test_evaluators.py"),
 ("export: the student's zero-SNR schedule dropped", [("addlib/export.py", "rescale_betas_zero_snr=zero_terminal_snr or schedule.rescale_zero_terminal_snr", "rescale_betas_zero_snr=schedule.rescale_zero_terminal_snr")], "tests/test_export.py"),
 ("export: LCM's default 50-step grid", [("addlib/export.py", "original_inference_steps=n,", "original_inference_steps=50,")], "tests/test_export.py"),
 ("tone: mid-grey counted as ink", [("addlib/diagnostics.py", "ink = (x > 0).float()", "ink = (x >= 0).float()")], "tests/test_diagnostics.py"),
 ("tone: ink spread over pixels, not images", [("addlib/diagnostics.py", '"ink_spread": ink.mean(1).std().item()', '"ink_spread": ink.std().item()')], "tests/test_diagnostics.py"),
 ("F views: the colour flag ignored", [("addlib/pretrain.py", "g, color=color, translation=False", "g, color=True, translation=False")], "tests/test_pretrain.py"),
 ("F pretraining ignores color_jitter", [("addlib/pretrain.py", "simclr_view(x, g, pc.color_jitter), simclr_view(x, g, pc.color_jitter)", "simclr_view(x, g), simclr_view(x, g)")], "tests/test_pretrain.py"),
 ("export: the pipeline's prompt encoding without the attention mask", [("addlib/export.py", "attention_mask=self.config.use_attention_mask)", "attention_mask=False)")], "tests/test_export.py"),
 ("Table 1's runs read the main run's add", [("addlib/config/loader.py", 'out = deep_merge({**raw, "add": ab["add"]}, ', "out = deep_merge(raw, ")], "tests/test_ablations.py"),
 ("a profile's add not applied to Table 1's", [("addlib/config/loader.py", '    if "add" in profile and "add" not in (profile.get("ablations") or {}):', '    if False:')], "tests/test_config.py"),
 ("Table 1's ADD settings keep the main run's budget", [("addlib/config/loader.py", "if k not in BUDGET}", "if k != 'sample_every'}")], "tests/test_config.py tests/test_ablations.py"),
 ("the report blind to nested departures", [("addlib/ablations.py", "if isinstance(v, dict) and v else", "if False else")], "tests/test_ablations.py"),
 ("Table 1's pairs judged without the seeds' spread", [("addlib/ablations.py", "else abs(gap) > spread}", "else abs(gap) > 0}")], "tests/test_ablations.py"),
 ("a one-seed row judged by a zero spread", [("addlib/ablations.py", 'if min(ra["seeds"], rb["seeds"]) > 1 else None', "if True else None")], "tests/test_ablations.py"),
 ("the kernel's tcmalloc under the wrong variable", [("addlib/malloc.py", '["--env", "LD_PRELOAD", ', '["--env", "LD_PRELOADS", ')], "tests/test_malloc.py"),
 ("ADDLIB_TCMALLOC=none ignored", [("addlib/malloc.py", 'if named.lower() == "none":', "if False:")], "tests/test_malloc.py"),
 ("tcmalloc never seen mapped", [("addlib/malloc.py", 'if "libtcmalloc" in line', 'if "libtcmalloc-x" in line')], "tests/test_malloc.py"),
]
only = sys.argv[1:]
for name, edits, tests in M:
    if only and not any(o in name for o in only):
        continue
    saved = {}
    ok = True
    for f, old, new in edits:
        p = R / f
        saved.setdefault(p, p.read_text())
        txt = p.read_text()
        if txt.count(old) != 1:
            print(f"!! {name}: pattern not found once in {f}: {old[:50]!r}"); ok = False; break
        p.write_text(txt.replace(old, new))
    if ok:
        r = subprocess.run(f"{sys.executable} -m pytest -x -q -p no:cacheprovider {tests}", shell=True, cwd=R,
                           capture_output=True, text=True)
        failed = [l for l in r.stdout.splitlines() if l.startswith("FAILED") or l.startswith("ERROR")]
        print(f"{'CAUGHT' if r.returncode else 'MISSED'}: {name}: {failed[0] if failed else r.stdout.strip().splitlines()[-1]}", flush=True)
    for p, txt in saved.items():
        p.write_text(txt)
