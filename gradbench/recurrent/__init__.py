"""Recurrent cells through time: vanilla RNN, LSTM and GRU with the exact chain (docs/design.md section 11).

``gb.Recurrent`` describes the net, ``gb.init_params(rnn, seed)`` draws its parameters in
torch's layout, ``gb.sequence_input(rnn, batch, seed)`` an input sequence, and
``gb.backprop(rnn, params, xs)`` runs forward and backward through time on any backend.
"""

from gradbench.recurrent.params import GeneratedSequence, RecurrentParams, init_params, sequence_input
from gradbench.recurrent.results import RecurrentGrads, RecurrentResult
from gradbench.recurrent.spec import CELLS, Recurrent

__all__ = ["CELLS", "GeneratedSequence", "Recurrent", "RecurrentGrads", "RecurrentParams", "RecurrentResult",
           "init_params", "sequence_input"]
