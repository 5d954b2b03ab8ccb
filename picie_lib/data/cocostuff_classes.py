"""COCO-Stuff-27's classes (reference: cocostuff27.md): the 27 coarse classes of IIC / PiCIE / STEGO (0..11
things, 12..26 stuff) and ``FINE_TO_COARSE``, the 182 COCO-Stuff fine indices (COCO-Stuff id - 1; 0..90
things, 91..181 stuff) to them; 255 (unlabeled) is ignored."""

from __future__ import annotations

from picie_lib.data.images import label_table

COARSE_NAMES = (
    "electronic-things",
    "appliance-things",
    "food-things",
    "furniture-things",
    "indoor-things",
    "kitchen-things",
    "accessory-things",
    "animal-things",
    "outdoor-things",
    "person-things",
    "sports-things",
    "vehicle-things",
    "ceiling-stuff",
    "floor-stuff",
    "food-stuff",
    "furniture-stuff",
    "rawmaterial-stuff",
    "textile-stuff",
    "wall-stuff",
    "window-stuff",
    "building-stuff",
    "ground-stuff",
    "plant-stuff",
    "sky-stuff",
    "solid-stuff",
    "structural-stuff",
    "water-stuff",
)
FIRST_STUFF_INDEX = 12
THING_CLASSES = tuple(range(FIRST_STUFF_INDEX))
STUFF_CLASSES = tuple(range(FIRST_STUFF_INDEX, len(COARSE_NAMES)))

# fine index, fine name, coarse index: cocostuff27.md's table, row for row (the PiCIE authors' table).
_FINE_TABLE = """
  0  person            9
  1  bicycle          11
  2  car              11
  3  motorcycle       11
  4  airplane         11
  5  bus              11
  6  train            11
  7  truck            11
  8  boat             11
  9  traffic light     8
 10  fire hydrant      8
 11  street sign       8
 12  stop sign         8
 13  parking meter     8
 14  bench             8
 15  bird              7
 16  cat               7
 17  dog               7
 18  horse             7
 19  sheep             7
 20  cow               7
 21  elephant          7
 22  bear              7
 23  zebra             7
 24  giraffe           7
 25  hat               6
 26  backpack          6
 27  umbrella          6
 28  shoe              6
 29  eye glasses       6
 30  handbag           6
 31  tie               6
 32  suitcase          6
 33  frisbee          10
 34  skis             10
 35  snowboard        10
 36  sports ball      10
 37  kite             10
 38  baseball bat     10
 39  baseball glove   10
 40  skateboard       10
 41  surfboard        10
 42  tennis racket    10
 43  bottle            5
 44  plate             5
 45  wine glass        5
 46  cup               5
 47  fork              5
 48  knife             5
 49  spoon             5
 50  bowl              5
 51  banana            2
 52  apple             2
 53  sandwich          2
 54  orange            2
 55  broccoli          2
 56  carrot            2
 57  hot dog           2
 58  pizza             2
 59  donut             2
 60  cake              2
 61  chair             3
 62  couch             3
 63  potted plant      3
 64  bed               3
 65  mirror            3
 66  dining table      3
 67  window            3
 68  desk              3
 69  toilet            3
 70  door              3
 71  tv                0
 72  laptop            0
 73  mouse             0
 74  remote            0
 75  keyboard          0
 76  cell phone        0
 77  microwave         1
 78  oven              1
 79  toaster           1
 80  sink              1
 81  refrigerator      1
 82  blender           1
 83  book              4
 84  clock             4
 85  vase              4
 86  scissors          4
 87  teddy bear        4
 88  hair drier        4
 89  toothbrush        4
 90  hair brush        4
 91  banner           17
 92  blanket          17
 93  branch           22
 94  bridge           20
 95  building-other   20
 96  bush             22
 97  cabinet          15
 98  cage             25
 99  cardboard        16
100  carpet           13
101  ceiling-other    12
102  ceiling-tile     12
103  cloth            17
104  clothes          17
105  clouds           23
106  counter          15
107  cupboard         15
108  curtain          17
109  desk-stuff       15
110  dirt             21
111  door-stuff       15
112  fence            25
113  floor-marble     13
114  floor-other      13
115  floor-stone      13
116  floor-tile       13
117  floor-wood       13
118  flower           22
119  fog              26
120  food-other       14
121  fruit            14
122  furniture-other  15
123  grass            22
124  gravel           21
125  ground-other     21
126  hill             24
127  house            20
128  leaves           22
129  light            15
130  mat              17
131  metal            16
132  mirror-stuff     15
133  moss             22
134  mountain         24
135  mud              21
136  napkin           17
137  net              25
138  paper            16
139  pavement         21
140  pillow           17
141  plant-other      22
142  plastic          16
143  platform         21
144  playingfield     21
145  railing          25
146  railroad         21
147  river            26
148  road             21
149  rock             24
150  roof             20
151  rug              17
152  salad            14
153  sand             21
154  sea              26
155  shelf            15
156  sky-other        23
157  skyscraper       20
158  snow             21
159  solid-other      24
160  stairs           15
161  stone            24
162  straw            22
163  structural-other 25
164  table            15
165  tent             20
166  textile-other    17
167  towel            17
168  tree             22
169  vegetable        14
170  wall-brick       18
171  wall-concrete    18
172  wall-other       18
173  wall-panel       18
174  wall-stone       18
175  wall-tile        18
176  wall-wood        18
177  water-other      26
178  waterdrops       26
179  window-blind     19
180  window-other     19
181  wood             24
"""


def _parse_fine_table() -> tuple[tuple[str, ...], tuple[int, ...]]:
    rows = [line.split() for line in _FINE_TABLE.strip().splitlines()]
    assert [int(r[0]) for r in rows] == list(range(182)), "the fine table must list 0..181 in order"
    return tuple(" ".join(r[1:-1]) for r in rows), tuple(int(r[-1]) for r in rows)


FINE_NAMES, FINE_TO_COARSE = _parse_fine_table()
FIRST_STUFF_FINE = 91  # fine 0..90 are the 91 COCO thing ids, 91..181 the 91 stuff classes
UNLABELED = 255
LABEL_TABLE = label_table(dict(enumerate(FINE_TO_COARSE)), ignore=(UNLABELED,))
