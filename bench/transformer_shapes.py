"""The realistic mix of bench/scale.sh: a GPT-2-small-sized transformer (12 layers, d_model 768,
vocabulary 50304, tied embedding) with its AdamW state, as the tensors a training job saves:
model_state_dict/<param> plus optimizer_state_dict/state/<i>/{exp_avg, exp_avg_sq, step}.
Prints JSON: [[name, [dims...]], ...]. float32 throughout (step: a 0-dim tensor); 124M
parameters, 1.49 GB with the optimizer state, 592 tensors from 0-dim and 3 KiB to 147 MiB.
"""
import json
import sys


def parameters(layers=12, d=768, vocab=50304, context=1024):
    yield "transformer.wte.weight", [vocab, d]
    yield "transformer.wpe.weight", [context, d]
    for i in range(layers):
        p = f"transformer.h.{i}."
        yield p + "ln_1.weight", [d]
        yield p + "ln_1.bias", [d]
        yield p + "attn.c_attn.weight", [3 * d, d]
        yield p + "attn.c_attn.bias", [3 * d]
        yield p + "attn.c_proj.weight", [d, d]
        yield p + "attn.c_proj.bias", [d]
        yield p + "ln_2.weight", [d]
        yield p + "ln_2.bias", [d]
        yield p + "mlp.c_fc.weight", [4 * d, d]
        yield p + "mlp.c_fc.bias", [4 * d]
        yield p + "mlp.c_proj.weight", [d, 4 * d]
        yield p + "mlp.c_proj.bias", [d]
    yield "transformer.ln_f.weight", [d]
    yield "transformer.ln_f.bias", [d]


def tensors():
    out = []
    for i, (name, shape) in enumerate(parameters()):
        out.append(["model_state_dict/" + name, shape])
        state = f"optimizer_state_dict/state/{i}/"
        out += [[state + "exp_avg", shape], [state + "exp_avg_sq", shape], [state + "step", []]]
    return out


if __name__ == "__main__":
    json.dump(tensors(), sys.stdout)
