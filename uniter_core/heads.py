"""Pre-training heads (official names and shapes) and the MLM-head initialisation used for the MiniLM start.

- `UniterMLMHead` (`cls`): BERT's transform (dense, GELU, LayerNorm), then a decoder tied to the word
  embeddings plus an output bias.
- `RegionFeatureRegression` (`feat_regress`): Linear, GELU, LayerNorm, then a linear map with the transposed
  `img_linear` weight (tied) and its own bias, back to region-feature space.
- `RegionClassification` (`region_classifier`): Linear, GELU, LayerNorm, Linear to the region classes.

`fit_mlm_head` explains how a sentence-transformer without MLM weights gets a working MLM head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform

from uniter_core.config import UniterConfig


class UniterLMPredictionHead(nn.Module):
    def __init__(self, config: UniterConfig, word_embedding_weight: nn.Parameter):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder.weight = word_embedding_weight  # the same Parameter: tied, one storage, one gradient
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states)) + self.bias


class UniterMLMHead(nn.Module):
    def __init__(self, config: UniterConfig, word_embedding_weight: nn.Parameter):
        super().__init__()
        self.predictions = UniterLMPredictionHead(config, word_embedding_weight)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden_states)


class RegionFeatureRegression(nn.Module):
    """MRFR: hidden state of a masked region -> its original feature vector."""

    def __init__(self, config: UniterConfig, img_linear_weight: nn.Parameter):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.GELU(),
                                 nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps))
        self.weight = img_linear_weight  # [hidden, img_dim], shared with the image embedding, used transposed
        self.bias = nn.Parameter(torch.zeros(config.img_dim))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.linear(self.net(hidden_states), self.weight.t(), self.bias)


class RegionClassification(nn.Module):
    """MRC / MRC-kl: hidden state of a masked region -> logits over the detector's region classes."""

    def __init__(self, config: UniterConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.GELU(),
                                 nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps),
                                 nn.Linear(config.hidden_size, config.num_region_classes))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.net(hidden_states)


# Caption-style sentences (written for this project, none of them about mats) on which `fit_mlm_head` fits
# its probe. No final full stop, like most image captions.
PROBE_SENTENCES = (
    'a man is riding a bicycle down the street', 'two children are playing with a ball in the park',
    'a woman is cutting vegetables in the kitchen', 'the train is arriving at the station on time',
    'a small boat is floating on the calm lake', 'an old car is parked next to the red house',
    'the students are listening to their teacher', 'a group of people are walking along the beach',
    'she is reading a book under a large tree', 'the chef is cooking pasta for dinner tonight',
    'a plate of food sits on the wooden table', 'the city skyline is covered in thick fog',
    'a young girl is holding an umbrella in the rain', 'he opened the window to let in some fresh air',
    'the airplane is flying high above the clouds', 'a horse is grazing in the green field',
    'the bird is singing on a branch of the tree', 'a dog is running across the grass with a stick',
    'the cow stands near the fence of the farm', 'a bowl of fruit is placed on the counter',
    'the baby is sleeping quietly in her crib', 'an elephant is walking slowly through the dust',
    'people are waiting for the bus at the corner', 'the mountains are covered with fresh snow',
    'a man in a suit is talking on his phone', 'the kids built a sandcastle near the water',
    'a laptop and a cup of coffee are on the desk', 'the flowers in the garden are blooming in spring',
    'a football player is kicking the ball toward the goal', 'the old woman is knitting a warm sweater',
    'a pizza with cheese and tomatoes is in the oven', "the clock on the wall shows three o'clock",
    'a tall giraffe is eating leaves from a tree', 'the fisherman caught a big fish this morning',
    'a couple is dancing at the wedding party', 'the truck is carrying wood to the factory',
    'a sheep is lying on the hill in the sun', 'two men are playing chess in the square',
    'the musician is playing the guitar on stage', 'a bear is searching for food near the river',
    'the waiter brought us the menu and some water', 'a little boy is flying a kite at the beach',
    'snow is falling softly on the quiet village', 'the doctor is talking with a patient in the hospital',
    'a red apple lies next to a glass of milk', 'the zebra is drinking water at the pond',
    'she painted a picture of the sea at sunset', 'the computer screen shows a map of the world',
    'a surfer is riding a large wave in the ocean', 'the farmer is driving a tractor across the field',
    'my brother bought a new pair of shoes yesterday', 'the television is on in the living room',
    'a mouse ran under the sofa in the corner', 'the lion is resting in the shade of a rock',
    'a woman is carrying a basket of bread', 'the bridge crosses the wide river near the town',
    'we ate sandwiches and drank juice at lunch', 'the police officer is directing traffic at the crossing',
    'a duck is swimming with its babies in the pond', 'the library is full of old books and maps',
    'an old man is sitting on a bench in the park', 'a woman is sitting at a table with her friends',
    'the boy is sitting on the steps outside his school', 'a girl is standing next to her bicycle',
    'three people are standing in line at the store', 'a man is standing on the roof of a building',
    'the family is having breakfast in the kitchen', 'a child is brushing her teeth in the bathroom',
    'the man is washing his car in the driveway', 'a woman is walking her dog along the river',
    'the cat is sleeping on the windowsill in the sun', 'a black dog is lying on the floor near the door',
    'the horse is pulling a cart full of hay', 'two birds are sitting on a wire above the road',
    'a herd of cows is crossing the road', 'the monkey is climbing up the tree',
    'a rabbit is eating carrots in the garden', 'the goat is standing on a large rock',
    'a squirrel is hiding nuts under the leaves', 'the puppy is chewing on an old shoe',
    'a kitten is playing with a ball of yarn', 'the chicken is walking around the yard',
    'a tiger is sleeping in the tall grass', 'the fox is running through the snowy forest',
    'a man is reading the newspaper on the train', 'the woman is typing an email on her computer',
    'a boy is eating an ice cream cone', 'the girl is drawing a picture with crayons',
    'a teenager is skateboarding in the empty parking lot', 'the worker is repairing the broken fence',
    'a nurse is helping an old woman walk', 'the pilot is sitting in the cockpit of the plane',
    'a man is fixing the engine of his motorcycle', 'the students are sitting in the classroom',
    'a woman is pushing a stroller down the sidewalk', 'the baker is taking bread out of the oven',
    'a man is selling vegetables at the market', 'the woman is watering the plants on her balcony',
    'a boy is jumping into the swimming pool', 'the girls are laughing at a funny movie',
    'a bus is stopped at a red light', 'the car is parked in front of the hotel',
    'a train is crossing the bridge over the river', 'the motorcycle is parked on the side of the road',
    'a ship is sailing across the ocean', 'the taxi is waiting outside the airport',
    'a bicycle is leaning against the wall', 'the helicopter is landing on the roof',
    'a sandwich and a salad are on the plate', 'the soup is hot and smells delicious',
    'a cake with candles is on the table', 'the bananas are hanging in a bunch',
    'a glass of orange juice is next to the toast', 'the hot dog is covered with mustard',
    'a bottle of wine is on the shelf', 'the kitchen has a large refrigerator and a stove',
    'a bed with white sheets is in the bedroom', 'the couch is in front of the television',
    'a lamp is standing in the corner of the room', 'the bathroom has a sink and a mirror',
    'a vase of flowers is on the window ledge', 'the keys are lying on the kitchen counter',
    'a pair of scissors is on the desk', 'the teddy bear is sitting on the bed',
    'a suitcase is standing by the front door', 'the umbrella is open to dry in the hallway',
    'a street sign points to the city center', 'the stop sign is at the end of the street',
    'a fire hydrant is on the corner of the block', 'the traffic light turned green',
    'a tall tower stands in the middle of the city', 'the church has a large bell in its tower',
    'a small house is at the edge of the forest', 'the road winds through the green hills',
    'a river flows through the valley', 'the waves are crashing on the rocky shore',
    'the sun is setting behind the mountains', 'dark clouds are gathering over the lake',
    'it is raining heavily in the city tonight', 'the leaves are turning red and yellow in autumn',
    'a rainbow appeared after the storm', 'the children are playing in the snow',
    'he kicked the ball over the fence', 'she threw the frisbee to her friend',
    'the tennis player is hitting the ball with her racket', 'a skier is going down the steep slope',
    'the baseball player is swinging his bat', 'a man is surfing on a big wave',
    'the runners are crossing the finish line', 'a team is celebrating their victory',
    'she is talking to her mother on the phone', 'he is writing a letter to his friend',
    'they are watching a movie at the cinema', 'we are going to the beach this weekend',
    'my sister is learning to play the piano', 'the teacher is writing on the blackboard',
    'the boy fell asleep on the sofa', 'the woman is wearing a blue dress and a hat',
    'a man in a black jacket is waiting for the train', 'the girl has long brown hair',
    'he is wearing glasses and a white shirt', 'she put on her coat and left the house',
    'the old man has a long grey beard', 'a cup of tea is on the table next to a book',
    'the children are drinking milk with their cookies', 'he ordered a bowl of noodles for lunch',
    'the restaurant is full of hungry people', 'a woman is buying fruit at the market',
    'the dog is barking at the stranger', 'a cat is chasing a mouse in the barn',
    'the sheep are grazing on the hillside', 'a bird is building a nest in the tree',
    'the fish are swimming in the aquarium', 'an owl is sitting on a branch at night',
    'the pigeons are eating bread crumbs in the square', 'a pig is rolling in the mud',
    'the bees are flying around the flowers', 'a deer is standing at the edge of the forest',
    'the camel is walking across the desert', 'a penguin is standing on the ice',
    'a brown dog is sleeping under the kitchen table', 'two cats are lying together on a blanket',
    'a white horse is standing in a muddy field', 'a giraffe is standing next to a tall tree',
    'three zebras are walking across the dry plain', 'an elephant is spraying water with its trunk',
    'a bear is sitting in the grass near a stream', 'a large bird is perched on top of the fence',
    'the dog is catching a frisbee in the air', 'a cat is looking out of the window at the birds',
    'a cow is lying down in the shade of a barn', 'a flock of sheep is being herded by a dog',
    'a small dog is riding in the basket of a bike', 'the cat is curled up asleep on the chair',
    'a dog with a red collar is sitting by the door', 'a horse and its rider are jumping over a fence',
    'a person is sitting on a bench reading a book', 'a man is lying on the grass in the park',
    'a woman is sitting on the floor with her laptop', 'a young man is sitting on the edge of the bed',
    'a little girl is sitting in a chair eating cake', 'a man is holding a surfboard on the beach',
    'a woman is holding a plate of pancakes', 'a boy is holding a baseball bat over his shoulder',
    'a kitchen with white cabinets and a black oven', 'a bathroom with a toilet and a small window',
    'a living room with a couch and a coffee table', 'a bedroom with a large bed and two pillows',
    'a desk with a computer monitor and a keyboard', 'a plate with a slice of pizza and a fork',
    'a bowl of soup next to a piece of bread', 'a cup of coffee and a donut on a napkin',
    'a stack of books sitting on a wooden shelf', 'a red truck is driving down a country road',
    'a double decker bus is parked near the curb', 'a blue car is stopped at the intersection',
    'a train is pulling into the station at night', 'a small airplane is parked on the runway',
    'a boat is tied to the dock in the harbor', 'a motorcycle is parked next to a red car',
    'a clock tower stands above the old buildings', 'a kite is flying high over the beach',
    'a person on skis is standing on a snowy hill', 'a man is throwing a ball to his dog',
    'a woman is feeding the ducks at the pond', 'a child is petting a goat at the farm',
    'a girl is brushing the mane of her pony', 'a boy is carrying his cat in his arms',
    'people are riding horses along the beach', 'a man is riding an elephant through the jungle',
    'a woman is riding a bicycle with a basket', 'a skateboarder is doing a trick on a ramp',
    'two people are sharing an umbrella in the rain', 'an orange cat is sitting on the hood of a car',
    'a puppy is sitting in a basket of laundry', 'a large dog is lying on a rug by the fire',
    'a woman sitting on a sofa with a cup of tea', 'a man standing in front of a bus',
    'a bowl of oranges on a kitchen table', 'a group of zebras grazing in a field',
    'a bird sitting on a branch of a tree', 'two dogs playing in the snow', 'a cat drinking water from a bowl',
    'a person flying a kite in a park', 'a plate of food with rice and vegetables',
    'a young boy swinging a tennis racket', 'a train traveling down the tracks',
    'a giraffe eating leaves from the top of a tree', 'a man riding a wave on top of a surfboard',
    'an old truck parked in a grassy field', 'a woman cutting a cake with a knife',
    'a toilet next to a sink in a bathroom', 'a cat laying on top of a laptop computer',
    'a horse grazing in a field near a barn', 'a sheep standing on a grassy hill',
    'a herd of elephants walking through the water', 'a little girl holding a teddy bear',
    'a dog sitting in the passenger seat of a car', 'a man sitting at a desk using a computer',
    'a bear walking through a forest',
)

GELU_IDENTITY_FLOOR = 10.0  # GELU(x) = x * Phi(x) equals x to float precision for x above this


@torch.no_grad()
def fit_mlm_head(model, tokenizer, sentences=PROBE_SENTENCES, ridge: float = 10.0, batch_size: int = 256) -> dict:
    """Initialise `model.cls` from the encoder itself: a closed-form linear probe, deterministic and offline.

    Why: the MiniLM we start from is a sentence-transformer; it ships no MLM head, and a random transform
    in front of the tied decoder predicts nothing. Procedure:
    1. For every word-piece of every probe sentence, run the encoder (text only, eval mode) with that one
       piece replaced by [MASK], and keep the final hidden state h at the masked position; its target is
       the LayerNorm-standardised embedding u of the original piece (the decoder is the embedding matrix).
    2. Ridge regression (bias not penalised) h -> u, solved in float64: weight W, bias b.
    3. Per embedding dimension, the least-squares affine map u -> e (the raw embedding): gamma, beta.
    4. transform.dense = (W, b + s) with one constant s that puts every fitted pre-activation above
       GELU_IDENTITY_FLOOR, where GELU is the identity; LayerNorm removes the constant s again, so
       transform(h) = gamma * standardise(W h + b) + beta, i.e. the probe's estimate of the masked piece's
       embedding, which the tied decoder scores against every word. Output bias: zero.
    Nothing is trained by gradient; the probe is a starting point that pre-training then refines.
    Returns a small report (counts, ridge, mean squared error of the fit).
    """
    mask_id = tokenizer.mask_token_id
    rows, positions, targets = [], [], []
    for ids in tokenizer(list(sentences))["input_ids"]:
        for j in range(1, len(ids) - 1):
            row = list(ids)
            row[j] = mask_id
            rows.append(row)
            positions.append(j)
            targets.append(ids[j])

    encoder = model.uniter
    was_training = encoder.training
    encoder.eval()
    device = encoder.device
    hidden = torch.empty(len(rows), model.config.hidden_size, dtype=torch.float64)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths per batch, little padding
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(rows[i]) for i in chunk)
        input_ids = torch.zeros(len(chunk), width, dtype=torch.long)
        attn = torch.zeros(len(chunk), width, dtype=torch.long)
        for k, i in enumerate(chunk):
            input_ids[k, :len(rows[i])] = torch.tensor(rows[i])
            attn[k, :len(rows[i])] = 1
        out = encoder(input_ids.to(device), None, None, None, attn.to(device)).last_hidden_state
        picked = out[torch.arange(len(chunk)), torch.tensor([positions[i] for i in chunk])]
        hidden[torch.tensor(chunk)] = picked.double().cpu()
    encoder.train(was_training)

    embeddings = encoder.embeddings.word_embeddings.weight.detach().double().cpu()[torch.tensor(targets)]
    standardised = F.layer_norm(embeddings, embeddings.shape[-1:])
    features = torch.cat([hidden, torch.ones(len(hidden), 1, dtype=torch.float64)], dim=1)
    penalty = ridge * torch.eye(features.size(1), dtype=torch.float64)
    penalty[-1, -1] = 0.0
    solution = torch.linalg.solve(features.T @ features + penalty, features.T @ standardised)
    weight, bias = solution[:-1].T, solution[-1]

    u = standardised - standardised.mean(0)
    gamma = (u * (embeddings - embeddings.mean(0))).sum(0) / (u * u).sum(0)
    beta = embeddings.mean(0) - gamma * standardised.mean(0)

    pre_activation = features @ solution
    shift = max(0.0, GELU_IDENTITY_FLOOR - pre_activation.min().item())
    transform = model.cls.predictions.transform
    transform.dense.weight.copy_(weight)
    transform.dense.bias.copy_(bias + shift)
    transform.LayerNorm.weight.copy_(gamma)
    transform.LayerNorm.bias.copy_(beta)
    model.cls.predictions.bias.zero_()
    fitted = F.layer_norm(pre_activation, pre_activation.shape[-1:]) * gamma + beta
    return {"sentences": len(sentences), "masked_pieces": len(rows), "ridge": ridge,
            "mse": (fitted - embeddings).pow(2).mean().item()}
