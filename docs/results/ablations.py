"""Ablation tables of the seed methods (issue 31), written from the benchmark reports in docs/results/.

Reads every docs/results/*.json that nnUNetv2_semi_benchmark wrote (a JSON without 'runs' is skipped) and writes
docs/results/ablations.md beside this file: per seed method, one row per trainer (today's name) and one column per
split (N, seed), each cell the trainer's validation Dice minus the labeled-only run's of the same split in the same
output folder, tagged with that folder. Runs of one folder repeated in several reports count once. No number in the
.md is typed by hand: all come from the reports.

    cd /work/main && .venv/bin/python docs/results/ablations.py
"""
import glob
import json
import os
import shlex
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
STOCK = 'nnUNetTrainer'
METHODS = [  # (title, prefix of the reports' trainer names, today's default)
    ('Mean Teacher', 'nnUNetTrainerMeanTeacher', 'nnUNetTrainerMeanTeacher'),
    ('CAML', 'nnUNetTrainerCAML', 'nnUNetTrainerCAML'),
    ('SSCL', 'nnUNetTrainerSSCL', 'nnUNetTrainerSSCL'),
    ('MASSL', 'nnUNetTrainerMASSL', 'nnUNetTrainerMASSL'),
    ('PLContrast', 'nnUNetTrainerPLContrast', 'nnUNetTrainerPLContrast'),
    ('Siamese pretraining and fine-tuning', 'nnUNetTrainerSiamese',
     'nnUNetTrainerSiamesePretrain:nnUNetTrainerSiameseFinetune'),
]

# What the seed methods' names in each report mean today: {report file: {name in that report: today's name}}.
# Every name of a seed method in a listed report is listed (checked below), identity entries included where the
# meaning was checked to be the same; a report not listed (a new one) is read with today's names. Sources:
# [A] docs/benchmarks.md, "Mean Teacher and MASSL with FixMatch's term, N = 3": "So the term is Mean Teacher's and
#     MASSL's default since 2026-12-05 [...]: `nnUNetTrainerMeanTeacher` is what these reports name
#     `nnUNetTrainerMeanTeacher_FixMatch`, `nnUNetTrainerMASSL` what they name `nnUNetTrainerMASSL_FixMatchEMA` (both
#     old names still train them), and the papers' forms, the rows `nnUNetTrainerMeanTeacher`, `nnUNetTrainerMASSL`,
#     `nnUNetTrainerMASSLJoint` and their ablations in the reports and tables written before, are `_noFixMatch` now".
#     Also docs/mean_teacher.md: "Reports written before 2026-12-05 name the default
#     `nnUNetTrainerMeanTeacher_FixMatch` (the name still trains it) and the paper's form `nnUNetTrainerMeanTeacher`",
#     and docs/massl.md: "Reports written before 2026-12-05 name today's default `nnUNetTrainerMASSL_FixMatchEMA`".
#     Every report here was committed before that change (commit 931cf98).
# [B] `nnUNetTrainerMeanTeacher_deployTeacher` was run at e697c04 (docs/benchmarks.md: "Mean Teacher's A/B runs
#     [...] seventh folder at code e697c04"), where it was a variant of the then `nnUNetTrainerMeanTeacher`, the
#     paper's form [A] (`add_variant(nnUNetTrainerMeanTeacher, 'nnUNetTrainerMeanTeacher_deployTeacher', ...)`);
#     today's `_deployTeacher` is a variant of today's default, with FixMatch's term (trainers/mean_teacher.py), and
#     no trainer deploys the teacher of the paper's form.
# [C] docs/massl.md: "`nnUNetTrainerMASSL_FixMatch` and `nnUNetTrainerMASSLJoint_FixMatch` take the network's own
#     pseudo-labels" and "With the network's own pseudo-labels (`_FixMatch`), first split: 0.693 against 0.551": the
#     report's run, the same meaning (FixMatch's term, self-targets, on the paper's MASSL) under the same name.
# [D] The siamese runs used today's loss scale: docs/siamese.md, "With the weights summing to 2 (now the default),
#     1 labeled case, first split: the fine-tuning from scratch is level with labeled-only (0.554 against 0.551) and
#     the pretrained chain 0.577"; weight_sum 2 came in 1a240f1, before these runs (3d642af, 7d63368: benchmarks.md,
#     "the N = 1 runs at 3d642af, the control at 7d63368"). `_FixMatchEMA` (71036d4): siamese.md, "Chain them as the
#     fine-tuning: `-tr nnUNetTrainerSiamesePretrain:nnUNetTrainerSiameseFinetune_FixMatchEMA`. [...] 0.749".
# [E] SSCL's default never changed (`_stockSupervised` and `_fuseBelowFullRes` were added as variants, 3d642af and
#     8f6f2fd); docs/sscl.md: "With FixMatch's term (`nnUNetTrainerSSCL_FixMatch`), 1 labeled case, first split:
#     0.631 against labeled-only's 0.550".
# [F] PLContrast's runs were at 7df8410, which made same-image pairs the default (benchmarks.md: "PLContrast's runs
#     at 7df8410"; "`nnUNetTrainerPLContrast` (same-image pairs, the new default)"); pl_contrast.md: "With the paper's
#     same-image pairs (today's default) it is 0.532 [...]; trained on its own pseudo-labels as well (`_selfTraining`)
#     0.519", and for the term "`_FixMatchEMA` 0.738 against labeled-only's 0.550".
# [G] CAML's default never changed (`_mutual010`, `_MLonly`, `_stockSupervised` are variants; docs/caml.md), but see
#     NOTES [H]: its training step did.
MT = {'nnUNetTrainerMeanTeacher_FixMatch': 'nnUNetTrainerMeanTeacher',  # [A]
      'nnUNetTrainerMeanTeacher': 'nnUNetTrainerMeanTeacher_noFixMatch'}  # [A]
RENAMES = {
    'hippocampus_2d_caml.json': {'nnUNetTrainerCAML': 'nnUNetTrainerCAML'},  # [G]
    'hippocampus_2d_caml_ablation.json': {'nnUNetTrainerCAML': 'nnUNetTrainerCAML',  # [G]
                                          'nnUNetTrainerCAML_MLonly': 'nnUNetTrainerCAML_MLonly'},
    'hippocampus_2d_caml_mutual010.json': {'nnUNetTrainerCAML': 'nnUNetTrainerCAML',  # [G]
                                           'nnUNetTrainerCAML_mutual010': 'nnUNetTrainerCAML_mutual010'},
    'hippocampus_2d_seed0_issue31.json': {
        'nnUNetTrainerMASSL_FixMatch': 'nnUNetTrainerMASSL_FixMatch',  # [C]
        'nnUNetTrainerSiamesePretrain:nnUNetTrainerSiameseFinetune':
            'nnUNetTrainerSiamesePretrain:nnUNetTrainerSiameseFinetune',  # [D]
        'nnUNetTrainerSiameseFinetune_fromScratch': 'nnUNetTrainerSiameseFinetune_fromScratch'},  # [D]
    'hippocampus_2d_s7_folder.json': {
        'nnUNetTrainerSSCL_FixMatch': 'nnUNetTrainerSSCL_FixMatch',  # [E]
        'nnUNetTrainerPLContrast': 'nnUNetTrainerPLContrast',  # [F]
        'nnUNetTrainerPLContrast_selfTraining': 'nnUNetTrainerPLContrast_selfTraining'},  # [F]
    'hippocampus_2d_n1_seed0_mean_teacher.json': {
        **MT, 'nnUNetTrainerMeanTeacher_deployTeacher':  # [B]
            '`nnUNetTrainerMeanTeacher_noFixMatch` with the teacher deployed (no trainer of that name today)'},
    'hippocampus_2d_n1_mean_teacher_fixmatch.json': MT,
    'hippocampus_2d_n1_seed0_massl_fixmatch_ema.json': {'nnUNetTrainerMASSL_FixMatchEMA': 'nnUNetTrainerMASSL'},  # [A]
    'hippocampus_2d_n1_massl_fixmatch_ema.json': {'nnUNetTrainerMASSL_FixMatchEMA': 'nnUNetTrainerMASSL'},  # [A]
    'hippocampus_2d_n3_mean_teacher_massl_fixmatch.json': {
        'nnUNetTrainerMeanTeacher_FixMatch': 'nnUNetTrainerMeanTeacher',  # [A]
        'nnUNetTrainerMASSL_FixMatchEMA': 'nnUNetTrainerMASSL'},  # [A]
    'hippocampus_2d_n1_seed0_plcontrast_siamese_fixmatch_ema.json': {
        'nnUNetTrainerPLContrast': 'nnUNetTrainerPLContrast',  # [F], the s7 folder's run
        'nnUNetTrainerPLContrast_FixMatchEMA': 'nnUNetTrainerPLContrast_FixMatchEMA',  # [F]
        'nnUNetTrainerSiamesePretrain:nnUNetTrainerSiameseFinetune_FixMatchEMA':
            'nnUNetTrainerSiamesePretrain:nnUNetTrainerSiameseFinetune_FixMatchEMA'},  # [D]
}
# Footnotes on every seed-method run of a report: {report file: note}.
# [H] Commit 056376e (after these runs): "Base: gradient clipping per optimizer [...] so a second network's or head's
#     gradient no longer shrinks the deployed network's step (CAML's V was clipped with A and the heads)".
CAML_NOTE = ('run before the base trainer clipped each optimizer\'s gradients on their own: in these runs CAML\'s '
             'model V was clipped together with model A and the heads, so today\'s trainer of this name is not '
             'exactly the one measured (not rerun since)')
NOTES = {f: CAML_NOTE for f in RENAMES if 'caml' in f}


def method_of(name):
    return next((m for m in METHODS if name.startswith(m[1])), None)


def output_folder(report):
    args = shlex.split(report['command'])
    if '-o' in args:
        return args[args.index('-o') + 1]
    return (f"$nnUNet_results/{report['dataset']}/nnunet_semi_benchmark__{report['plans']}__"
            f"{report['configuration']}__{report['epochs']}epochs__fold{report['fold']}")


def same_path(a, b):  # a relative -o names the absolute one that ends with it
    return a == b or a.endswith('/' + b) or b.endswith('/' + a)


def tag_of(path):
    name = os.path.basename(path.rstrip('/'))
    if name.startswith('nnunet_semi_benchmark__'):  # no -o: the benchmark's default folder
        return 'dflt'
    return name.removeprefix('bench_').removesuffix('_2d_20epochs')


def read_reports():
    """Folders in order of first appearance: {'path', 'files', 'dice': {(name, n, seed): Dice}}; and per today's
    name the reports' other names and the notes."""
    folders, old_names, notes = [], defaultdict(set), defaultdict(set)
    for file in sorted(glob.glob(os.path.join(HERE, '*.json'))):
        with open(file) as f:
            report = json.load(f)
        if 'runs' not in report:
            continue
        file = os.path.basename(file)
        renames, runs = RENAMES.get(file, {}), {}
        for run in report['runs']:
            name = run['method']
            if method_of(name):
                assert file not in RENAMES or name in renames, f'{file}: {name} is not in RENAMES'
                name = renames.get(name, name)
                if name != run['method']:
                    old_names[name].add(run['method'])
                if file in NOTES:
                    notes[name].add(NOTES[file])
            runs[(name, run['n'], run['seed'])] = run['dice']
        path = output_folder(report)
        # the same folder: the same path and no run of it with another Dice (the default path names different
        # machines' folders)
        folder = next((f for f in folders if same_path(f['path'], path) and
                       all(f['dice'].get(k, v) == v for k, v in runs.items())), None)
        if folder is None:
            folder = {'path': path, 'files': [], 'dice': {}}
            folders.append(folder)
        if path.startswith('/'):
            folder['path'] = path
        folder['files'].append(file)
        folder['dice'].update(runs)
    tags = []
    for folder in folders:
        tag = tag_of(folder['path'])
        folder['tag'] = tag if tag not in tags else f'{tag}{tags.count(tag) + 1}'
        tags.append(tag)
    return folders, old_names, notes


def differences(folders):
    """{name: {(n, seed): [(tag, Dice - labeled-only, fully supervised - labeled-only or None)]}}, runs left out."""
    cells, left_out = defaultdict(lambda: defaultdict(list)), []
    for folder in folders:
        dice = folder['dice']
        for (name, n, seed), value in sorted(dice.items(), key=str):
            if name == STOCK or n is None:
                continue
            labeled_only, full = dice.get((STOCK, n, seed)), dice.get((STOCK, None, None))
            if labeled_only is None:
                left_out.append(f'`{name}` N = {n} seed {seed} ({folder["tag"]})')
                continue
            gap = None if full is None else full - labeled_only
            cells[name][(n, seed)].append((folder['tag'], value - labeled_only, gap))
    return cells, left_out


def mean(values):
    return sum(values) / len(values)


def on_the_means(per_split, n, seeds):
    """Mean over the seeds of the differences (several folders of a split averaged first) and the share of the gap."""
    if not all((n, s) in per_split for s in seeds):
        return '', ''
    diff = mean([mean([d for _, d, _ in per_split[(n, s)]]) for s in seeds])
    gaps = [g for s in seeds for _, _, g in per_split[(n, s)]]
    if None in gaps:
        return f'{diff:+.3f}', ''
    gap = mean([mean([g for _, _, g in per_split[(n, s)]]) for s in seeds])
    return f'{diff:+.3f}', f'{diff / gap:.0%}'


def noise(folders):
    """Per N: the largest spread (max - min) of the labeled-only runs of one split over folders."""
    runs = defaultdict(list)
    for folder in folders:
        for (name, n, seed), value in folder['dice'].items():
            if name == STOCK and n is not None:
                runs[(n, seed)].append(value)
    spread = defaultdict(float)
    for (n, _), values in runs.items():
        if len(values) > 1:
            spread[n] = max(spread[n], max(values) - min(values))
    return dict(sorted(spread.items()))


def table(title, default, names, cells, old_names, notes, seeds):
    names = sorted(names, key=lambda name: (name != default, name.strip('`')))
    splits = sorted({split for name in names for split in cells[name]})
    full_ns = [n for n in sorted({n for n, _ in splits}) if any(all((n, s) in cells[name] for s in seeds)
                                                                 for name in names)]
    header = ['trainer'] + [f'N = {n}, seed {s}' for n, s in splits]
    for n in full_ns:
        header += [f'N = {n}: mean over seeds', f'N = {n}: gap closed']
    lines = [f'## {title}', '', '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    letters, footnotes = {}, []
    for name in names:
        label = name if ' ' in name else f'`{name}`'
        if name == default:
            label += ' **default**'
        if old_names[name]:
            label += ' (reports: ' + ', '.join(f'`{o}`' for o in sorted(old_names[name])) + ')'
        for note in sorted(notes[name]):
            if note not in letters:
                letters[note] = 'abcdefghij'[len(letters)]
                footnotes.append(f'({letters[note]}) {note}.')
            label += f' ({letters[note]})'
        row = [label] + ['; '.join(f'{d:+.3f} ({tag})' for tag, d, _ in cells[name].get(split, []))
                         for split in splits]
        for n in full_ns:
            row += on_the_means(cells[name], n, seeds)
        lines.append('| ' + ' | '.join(row) + ' |')
    if default not in names:
        lines += ['', f'Today\'s default, `{default}`, has no run in these reports.']
    return lines + ([''] + footnotes if footnotes else []) + ['']


def main():
    folders, old_names, notes = read_reports()
    cells, left_out = differences(folders)
    spread = noise(folders)
    seeds = sorted({seed for folder in folders for _, n, seed in folder['dice'] if n is not None})  # all reports'
    lines = [
        '# Ablations of the seed methods', '',
        'Each cell is a trainer\'s validation Dice minus that of labeled-only (stock `nnUNetTrainer` on the same N '
        'labeled cases) on the same split (N, seed) in the same output folder, whose tag follows it; trainers are '
        'named as today, with the reports\' names in parentheses where they differ. Written by '
        '`.venv/bin/python docs/results/ablations.py` from every benchmark report `docs/results/*.json` '
        '(`nnUNetv2_semi_benchmark`\'s results.json, unedited); the renames and their sources are in that script.', '',
        'Run-to-run noise: labeled-only runs of one split in different folders (the same stock training, which '
        'nnU-Net does not seed) differ by up to ' +
        ' and '.join(f'{s:.3f} Dice with N = {n}' for n, s in spread.items()) +
        '; differences smaller than that are within the noise. "Mean over seeds" averages the differences of '
        'seeds ' + ', '.join(str(s) for s in seeds) + ' (a split run in several folders averaged first); "gap '
        'closed" divides it by the same mean of fully supervised minus labeled-only, both of the same folders.', '',
        '| tag | output folder | reports |', '|---|---|---|']
    for folder in folders:
        lines.append(f'| {folder["tag"]} | `{folder["path"]}` | ' + ', '.join(folder['files']) + ' |')
    lines.append('')
    for title, prefix, default in METHODS:
        names = [name for name in cells if method_of(next(iter(old_names[name]), name)) == (title, prefix, default)]
        if names:
            lines += table(title, default, names, cells, old_names, notes, seeds)
    lines += ['## Weak-to-strong reference trainers', '',
              'FixMatch, UniMatch and BCP are left out: their defaults changed several times while these reports '
              'were written (class-balanced weights, the Dice term, the EMA teacher, BCP\'s labeled step), several '
              'of the reports\' forms have no trainer today, and the renames in docs/benchmarks.md are not all '
              'current. Their results, under the names they ran with, are in docs/benchmarks.md.', '']
    if left_out:
        lines += ['Runs without a labeled-only run of their split in their folder, left out: ' +
                  ', '.join(left_out) + '.', '']
    with open(os.path.join(HERE, 'ablations.md'), 'w') as f:
        f.write('\n'.join(lines))


if __name__ == '__main__':
    main()
